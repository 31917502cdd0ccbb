//! Per-VM run directories: `<runtime root>/<id>/` holds a VM's sockets, console log and the
//! logs of its helper processes, and a `lock` file its supervisor holds (flock) for as long
//! as it lives.
//!
//! Creation is atomic with respect to [`collect_stale`]: the directory is made as
//! `.<id>.new`, locked, then renamed, so a directory with a visible name is always locked by
//! a live supervisor — unless that supervisor died without cleaning up (SIGKILL). Its lock is
//! then free, and the next krunbox start removes the directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::lock::{self, LockGuard};

/// The name of the lock file in each run directory.
pub const LOCK_FILE: &str = "lock";

/// A `.new` directory older than this is an abandoned creation.
const ABANDONED_CREATION: Duration = Duration::from_secs(60);

/// Why a run directory could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// A file operation.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The lock.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// Another VM has this id.
    #[error("run directory {0} already exists")]
    Exists(PathBuf),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RunDirError + 'a {
    move |source| RunDirError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A fresh, unique VM id: `<pid>-<nanoseconds>` in hex is unique per host and sorts by start.
pub fn new_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}-{:x}", nanos, std::process::id())
}

/// A created and locked run directory.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: LockGuard,
}

impl RunDir {
    /// Creates `<root>/<id>` (mode 0700) and locks it.
    pub fn create(root: &Path, id: &str) -> Result<Self, RunDirError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io("create", root))?;
        let path = root.join(id);
        if path.exists() {
            return Err(RunDirError::Exists(path));
        }
        let staging = root.join(format!(".{id}.new"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(io("create", &staging))?;
        let guard = lock::exclusive(&staging.join(LOCK_FILE))?;
        std::fs::rename(&staging, &path).map_err(io("rename into", &path))?;
        Ok(Self { path, _lock: guard })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory (the lock is released after, when `self` drops).
    pub fn remove(self) -> Result<(), RunDirError> {
        std::fs::remove_dir_all(&self.path).map_err(io("remove", &self.path))
    }
}

/// Removes run directories whose supervisor is gone; returns what it removed.
pub fn collect_stale(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ABANDONED_CREATION);
            if !old {
                continue;
            }
        }
        match lock::try_exclusive(&path.join(LOCK_FILE)) {
            Ok(Some(_unlocked)) => match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(dir = %path.display(), "removed the run directory of a VM whose supervisor died");
                    removed.push(path);
                }
                Err(err) => {
                    tracing::warn!(dir = %path.display(), %err, "cannot remove stale run directory")
                }
            },
            Ok(None) => {}
            Err(err) => tracing::debug!(dir = %path.display(), %err, "cannot check run directory"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_directories_survive_collection_and_dead_ones_do_not() {
        let root = tempfile::tempdir().unwrap();
        let live = RunDir::create(root.path(), "live").unwrap();
        std::fs::write(live.path().join("console.log"), b"x").unwrap();
        let dead = RunDir::create(root.path(), "dead").unwrap();
        let dead_path = dead.path().to_owned();
        drop(dead); // its supervisor "died" without removing it
        assert!(matches!(
            RunDir::create(root.path(), "live"),
            Err(RunDirError::Exists(_))
        ));
        let removed = collect_stale(root.path());
        assert_eq!(removed, std::slice::from_ref(&dead_path));
        assert!(!dead_path.exists());
        assert!(live.path().join("console.log").exists());
        let live_path = live.path().to_owned();
        live.remove().unwrap();
        assert!(!live_path.exists());
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(new_id(), new_id());
    }
}
