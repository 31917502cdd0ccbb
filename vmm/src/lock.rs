//! Advisory file locks (flock) that serialise krunbox processes sharing a directory.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A held lock; released when dropped (or when the process dies, however it dies).
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("cannot lock {path}: {source}")]
pub struct LockError {
    /// The lock file.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

fn open(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LockError {
            path: path.to_owned(),
            source,
        })
}

/// Takes an exclusive lock on `path` (created if missing), waiting for other holders.
pub fn exclusive(path: &Path) -> Result<LockGuard, LockError> {
    let file = open(path)?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map(|lock| LockGuard { _lock: lock })
        .map_err(|(_, errno)| LockError {
            path: path.to_owned(),
            source: errno.into(),
        })
}

/// Takes an exclusive lock on `path` if nobody holds it; `Ok(None)` when someone does.
pub fn try_exclusive(path: &Path) -> Result<Option<LockGuard>, LockError> {
    let file = open(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(LockGuard { _lock: lock })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(LockError {
            path: path.to_owned(),
            source: errno.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_seen_as_busy_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = exclusive(&path).unwrap();
        assert!(try_exclusive(&path).unwrap().is_none());
        drop(held);
        assert!(try_exclusive(&path).unwrap().is_some());
    }
}
