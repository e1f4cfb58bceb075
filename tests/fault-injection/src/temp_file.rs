//! Temporary files the tests hand to the binaries (registries, configs),
//! removed on drop — also when a test panics.

use std::path::{Path, PathBuf};

/// A temporary file, removed on drop (also when the test panics).
#[derive(Debug)]
pub struct TempFile(PathBuf);

impl std::ops::Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempFile {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `content` to a fresh temporary file whose name ends in `name`.
pub fn temp_file(name: &str, content: &str) -> TempFile {
    let path = std::env::temp_dir().join(format!("fault-{}-{name}", crate::unique()));
    std::fs::write(&path, content).unwrap();
    TempFile(path)
}
