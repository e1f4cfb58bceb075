//! The embedded registry: a JSON file with Hono's record shapes, held in
//! memory as an immutable snapshot that a reload swaps atomically.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use crate::registry::{
    Credentials, Device, PskGrant, Registry, RegistryDocument, RegistryFuture, RegistrySnapshot,
    Tenant,
};

/// A registry file could not be loaded; the previous registry stays in use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryLoadError {
    /// The file could not be read.
    #[error("cannot read registry file {path}: {source}")]
    Io {
        /// The registry file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid JSON or a record has the wrong shape.
    #[error("registry file {path}, line {line}, column {column}: {message}")]
    Parse {
        /// The registry file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The records are well-formed but inconsistent (duplicates, dangling
    /// references).
    #[error("registry file {path}: {message}")]
    Invalid {
        /// The registry file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// The file was read and the new registry is in use.
    Reloaded,
    /// The file had not changed since the last load; nothing was done.
    Unchanged,
}

/// A [`Registry`] read from a JSON file.
///
/// Look-ups read the current snapshot (an `Arc` behind a lock held only to
/// clone the `Arc`), so they never wait for a reload; a reload parses the
/// whole file first and swaps the snapshot only if it is valid.
#[derive(Debug)]
pub struct FileRegistry {
    path: PathBuf,
    snapshot: RwLock<Arc<RegistrySnapshot>>,
    /// Modification time and length of the file at the last load attempt.
    stamp: Mutex<Option<FileStamp>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl FileRegistry {
    /// Loads the registry from `path`.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, RegistryLoadError> {
        let path = path.into();
        let stamp = file_stamp(&path);
        let snapshot = read_snapshot(&path)?;
        Ok(Self {
            path,
            snapshot: RwLock::new(Arc::new(snapshot)),
            stamp: Mutex::new(stamp),
        })
    }

    /// A registry from JSON text (not backed by a file; reloads fail).
    pub fn from_json(json: &str) -> Result<Self, RegistryLoadError> {
        let path = PathBuf::from("<inline>");
        let snapshot = parse_snapshot(&path, json)?;
        Ok(Self {
            path,
            snapshot: RwLock::new(Arc::new(snapshot)),
            stamp: Mutex::new(None),
        })
    }

    /// The file this registry is read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The registry currently in use.
    pub fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Re-reads the file (the binary calls this on SIGHUP). On error the
    /// previous registry stays in use and the error is returned (and logged).
    pub fn reload(&self) -> Result<ReloadOutcome, RegistryLoadError> {
        let stamp = file_stamp(&self.path);
        self.remember(stamp);
        match read_snapshot(&self.path) {
            Ok(snapshot) => {
                let (tenants, devices, credentials) = snapshot.counts();
                *self
                    .snapshot
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(snapshot);
                tracing::info!(
                    path = %self.path.display(), tenants, devices, credentials,
                    "device registry reloaded"
                );
                Ok(ReloadOutcome::Reloaded)
            }
            Err(error) => {
                tracing::error!(%error, "device registry not reloaded; keeping the previous one");
                Err(error)
            }
        }
    }

    /// Reloads if the file's modification time or length changed since the
    /// last load attempt (a broken file is tried once per change).
    pub fn reload_if_changed(&self) -> Result<ReloadOutcome, RegistryLoadError> {
        let stamp = file_stamp(&self.path);
        let previous = *self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if stamp == previous {
            return Ok(ReloadOutcome::Unchanged);
        }
        self.reload()
    }

    /// Starts a task that checks the file every `interval` and reloads it
    /// when it changed. The task ends when the registry is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                // Errors are logged by reload().
                let _ = registry.reload_if_changed();
            }
        })
    }

    fn remember(&self, stamp: Option<FileStamp>) {
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
    }
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

fn read_snapshot(path: &Path) -> Result<RegistrySnapshot, RegistryLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| RegistryLoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_snapshot(path, &text)
}

fn parse_snapshot(path: &Path, text: &str) -> Result<RegistrySnapshot, RegistryLoadError> {
    let doc: RegistryDocument =
        serde_json::from_str(text).map_err(|e| RegistryLoadError::Parse {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
    RegistrySnapshot::build(doc).map_err(|message| RegistryLoadError::Invalid {
        path: path.to_owned(),
        message,
    })
}

impl Registry for FileRegistry {
    fn tenant<'a>(&'a self, tenant_id: &'a str) -> RegistryFuture<'a, Option<Arc<Tenant>>> {
        let found = self.snapshot().tenant(tenant_id);
        Box::pin(async move { Ok(found) })
    }

    fn device<'a>(
        &'a self,
        tenant_id: &'a str,
        device_id: &'a str,
    ) -> RegistryFuture<'a, Option<Arc<Device>>> {
        let found = self.snapshot().device(tenant_id, device_id);
        Box::pin(async move { Ok(found) })
    }

    fn credentials<'a>(
        &'a self,
        tenant_id: &'a str,
        auth_id: &'a str,
        kind: &'a str,
    ) -> RegistryFuture<'a, Option<Arc<Credentials>>> {
        let found = self.snapshot().credentials(tenant_id, auth_id, kind);
        Box::pin(async move { Ok(found) })
    }

    fn psk(&self, tenant_id: &str, auth_id: &str, now: SystemTime) -> Option<PskGrant> {
        self.snapshot().psk(tenant_id, auth_id, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"tenants": [{"tenant-id": "t"}],
        "devices": [{"tenant-id": "t", "device-id": "d"}],
        "credentials": [{"tenant-id": "t", "device-id": "d", "type": "psk", "auth-id": "a", "secrets": [{"key": "a2V5"}]}]}"#;

    const CHANGED: &str = r#"{"tenants": [{"tenant-id": "t"}],
        "devices": [{"tenant-id": "t", "device-id": "d"}, {"tenant-id": "t", "device-id": "e"}],
        "credentials": [{"tenant-id": "t", "device-id": "d", "type": "psk", "auth-id": "a", "secrets": [{"key": "bmV3LWtleQ=="}]}]}"#;

    #[test]
    fn broken_file_keeps_the_previous_registry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        std::fs::write(&path, GOOD).unwrap();
        let registry = FileRegistry::load(&path).unwrap();
        let now = SystemTime::now();
        assert_eq!(registry.psk("t", "a", now).unwrap().key, b"key");

        // A syntax error on line 2: reported with file, line and column.
        std::fs::write(&path, "{\"tenants\": [\n  {\"tenant-id\": \"t\",, }]}").unwrap();
        let err = registry.reload().unwrap_err();
        match &err {
            RegistryLoadError::Parse {
                path: p,
                line,
                column,
                ..
            } => {
                assert_eq!(p, &path);
                assert_eq!(*line, 2);
                assert_eq!(*column, 21);
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("registry.json") && text.contains("line 2"),
            "{text}"
        );
        assert_eq!(registry.psk("t", "a", now).unwrap().key, b"key");
        assert_eq!(registry.snapshot().counts(), (1, 1, 1));

        // A well-formed but inconsistent file is rejected too.
        std::fs::write(
            &path,
            r#"{"devices": [{"tenant-id": "nope", "device-id": "d"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            registry.reload(),
            Err(RegistryLoadError::Invalid { .. })
        ));
        assert_eq!(registry.snapshot().counts(), (1, 1, 1));

        // A missing file as well.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            registry.reload(),
            Err(RegistryLoadError::Io { .. })
        ));
        assert_eq!(registry.psk("t", "a", now).unwrap().key, b"key");

        // A fixed file is taken.
        std::fs::write(&path, CHANGED).unwrap();
        assert_eq!(registry.reload().unwrap(), ReloadOutcome::Reloaded);
        assert_eq!(registry.psk("t", "a", now).unwrap().key, b"new-key");
        assert_eq!(registry.snapshot().counts(), (1, 2, 1));
    }

    #[test]
    fn reload_if_changed_notices_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        std::fs::write(&path, GOOD).unwrap();
        let registry = FileRegistry::load(&path).unwrap();
        assert_eq!(
            registry.reload_if_changed().unwrap(),
            ReloadOutcome::Unchanged
        );
        // Different length, so the change is seen even within one mtime tick.
        std::fs::write(&path, CHANGED).unwrap();
        assert_eq!(
            registry.reload_if_changed().unwrap(),
            ReloadOutcome::Reloaded
        );
        assert_eq!(
            registry.reload_if_changed().unwrap(),
            ReloadOutcome::Unchanged
        );
        assert_eq!(registry.snapshot().counts(), (1, 2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn watch_reloads_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        std::fs::write(&path, GOOD).unwrap();
        let registry = Arc::new(FileRegistry::load(&path).unwrap());
        let task = registry.watch(Duration::from_secs(1));
        std::fs::write(&path, CHANGED).unwrap();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        assert_eq!(registry.snapshot().counts(), (1, 2, 1));
        drop(registry);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(task.is_finished());
    }

    #[tokio::test]
    async fn the_sample_registry_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hono-registry.json");
        let registry = FileRegistry::load(path).unwrap();
        let now = SystemTime::now();
        let sensor = registry
            .psk_for_identity(b"sensor1@DEFAULT_TENANT", '@', now)
            .unwrap();
        assert!(
            registry
                .psk_for_identity(b"sensor1@OTHER", '@', now)
                .is_none()
        );
        assert!(registry.psk_for_identity(b"sensor1", '@', now).is_none());
        assert!(
            registry
                .psk_for_identity(b"sensor1@DEFAULT_TENANT", '|', now)
                .is_none()
        );
        assert_eq!(
            (sensor.device_id.as_str(), sensor.key.as_slice()),
            ("4711", &b"hono-secret"[..])
        );
        let gw = registry.psk("DEFAULT_TENANT", "gw", now).unwrap();
        assert_eq!(
            (gw.device_id.as_str(), gw.key.as_slice()),
            ("gw-1", &b"gw-secret"[..])
        );
        for device in ["4711", "4712"] {
            let ok = crate::authorize(&registry, "DEFAULT_TENANT", device, Some("gw-1"))
                .await
                .unwrap();
            assert_eq!(ok.gateway.unwrap().device_id, "gw-1");
        }
    }

    #[tokio::test]
    async fn trait_lookups_answer_from_the_snapshot() {
        let registry: Arc<dyn Registry> = Arc::new(FileRegistry::from_json(GOOD).unwrap());
        assert!(registry.tenant("t").await.unwrap().is_some());
        assert!(registry.tenant("x").await.unwrap().is_none());
        assert!(registry.device("t", "d").await.unwrap().is_some());
        assert!(registry.device("t", "x").await.unwrap().is_none());
        let c = registry
            .credentials("t", "a", "psk")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.device_id, "d");
    }
}
