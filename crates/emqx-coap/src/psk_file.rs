//! The DTLS pre-shared key file (`--psk-file`): one `identity:secret` per
//! line.
//!
//! ```text
//! # comment lines and blank lines are ignored
//! sensor-1:my secret
//! sensor-2:hex:00ff10
//! ```
//!
//! - The identity is everything before the first `:`; the secret is the
//!   UTF-8 bytes after it, or — when written `hex:...` — the bytes the hex
//!   digits spell. A `#` after the `:` is part of the secret (only whole
//!   lines are comments). Line ends (`\r\n`) and leading/trailing whitespace of a
//!   line are not part of it.
//! - Empty identities or secrets, bad hex and repeated identities are
//!   errors naming the file and the line; the secret never appears in an
//!   error.
//! - In EMQX mode the identity becomes the clientid of requests that carry
//!   none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why the PSK file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PskFileError {
    /// The file could not be read.
    #[error("PSK file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not `identity:secret`.
    #[error("PSK file {path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: &'static str,
    },
}

/// Identities and their keys, as loaded from the file.
#[derive(Clone, Default)]
pub struct PskFile {
    keys: HashMap<Vec<u8>, Vec<u8>>,
}

impl std::fmt::Debug for PskFile {
    // Never print keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskFile")
            .field("identities", &self.keys.len())
            .finish()
    }
}

impl PskFile {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, PskFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PskFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks `text` as the content of the file `path` (used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, PskFileError> {
        let mut keys = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |message| PskFileError::Line {
                path: path.to_owned(),
                line: index + 1,
                message,
            };
            let (identity, secret) = line
                .split_once(':')
                .ok_or_else(|| error("expected identity:secret"))?;
            if identity.is_empty() {
                return Err(error("empty identity"));
            }
            let key = match secret.strip_prefix("hex:") {
                Some(hex) => decode_hex(hex).ok_or_else(|| error("bad hex secret"))?,
                None => secret.as_bytes().to_vec(),
            };
            if key.is_empty() {
                return Err(error("empty secret"));
            }
            if keys.insert(identity.as_bytes().to_vec(), key).is_some() {
                return Err(error("identity listed twice"));
            }
        }
        Ok(Self { keys })
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if the file lists no identity.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key of `identity`.
    pub fn key(&self, identity: &[u8]) -> Option<&[u8]> {
        self.keys.get(identity).map(Vec::as_slice)
    }

    /// The identity → key map (a `coap_dtls::PskStore`).
    pub fn into_map(self) -> HashMap<Vec<u8>, Vec<u8>> {
        self.keys
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PskFile, PskFileError> {
        PskFile::parse(text, Path::new("psk.txt"))
    }

    #[test]
    fn identities_text_and_hex_secrets() {
        let f = parse(
            "# devices\n\nsensor1:secret\r\ngw:with:colons\nraw:hex:00ff10\n  spaced:x y  \n",
        )
        .unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(f.key(b"sensor1"), Some(&b"secret"[..]));
        assert_eq!(f.key(b"gw"), Some(&b"with:colons"[..]));
        assert_eq!(f.key(b"raw"), Some(&[0x00, 0xff, 0x10][..]));
        assert_eq!(f.key(b"spaced"), Some(&b"x y"[..]));
        assert_eq!(f.key(b"nobody"), None);
        assert!(!format!("{f:?}").contains("secret"));
    }

    #[test]
    fn bad_lines_name_the_line_and_hide_the_secret() {
        for (text, line) in [
            ("a:b\nno-colon\n", 2),
            (":secret\n", 1),
            ("a:\n", 1),
            ("a:hex:0g\n", 1),
            ("a:hex:abc\n", 1),
            ("a:hex:\n", 1),
            ("a:x\n#\na:y\n", 3),
        ] {
            let e = parse(text).unwrap_err();
            match &e {
                PskFileError::Line { line: l, .. } => assert_eq!(*l, line, "{text:?}"),
                other => panic!("{other:?}"),
            }
            let shown = e.to_string();
            assert!(shown.starts_with("PSK file psk.txt:"), "{shown}");
            assert!(!shown.contains("secret\n"), "{shown}");
        }
        assert!(matches!(
            PskFile::load(Path::new("/nonexistent/psk")),
            Err(PskFileError::Io { .. })
        ));
    }
}
