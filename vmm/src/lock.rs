//! Advisory file locks (flock) that serialise krunbox processes sharing a directory.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A held lock; released when dropped (or when the process dies, however it dies).
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
}

impl LockGuard {
    /// Whether the locked file is still the one at `path` (same device and inode): a lock
    /// waited for while its file was removed and another made in its place holds nothing.
    pub fn is_at(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self._lock.metadata(), std::fs::symlink_metadata(path)) {
            (Ok(held), Ok(there)) => held.dev() == there.dev() && held.ino() == there.ino(),
            _ => false,
        }
    }
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

/// Opens the lock file, never through a symbolic link (a planted link must not make us create
/// or lock a file elsewhere).
fn open(path: &Path, create: bool) -> Result<File, LockError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(create)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| LockError {
            path: path.to_owned(),
            source,
        })
}

/// Takes an exclusive lock on `path` (created if missing), waiting for other holders.
pub fn exclusive(path: &Path) -> Result<LockGuard, LockError> {
    let file = open(path, true)?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map(|lock| LockGuard { _lock: lock })
        .map_err(|(_, errno)| LockError {
            path: path.to_owned(),
            source: errno.into(),
        })
}

/// Takes a shared lock on `path` (created if missing), waiting while someone holds it
/// exclusively: a lease that an exclusive [`try_exclusive`] sees as "in use".
pub fn shared(path: &Path) -> Result<LockGuard, LockError> {
    let file = open(path, true)?;
    Flock::lock(file, FlockArg::LockShared)
        .map(|lock| LockGuard { _lock: lock })
        .map_err(|(_, errno)| LockError {
            path: path.to_owned(),
            source: errno.into(),
        })
}

/// Takes an exclusive lock on `path` if nobody holds it; `Ok(None)` when someone does.
pub fn try_exclusive(path: &Path) -> Result<Option<LockGuard>, LockError> {
    try_lock(open(path, true)?, path)
}

/// Like [`try_exclusive`] on a lock file that must already exist (probing, which must not
/// leave a file behind); a missing one is an error of kind `NotFound`.
pub fn try_exclusive_existing(path: &Path) -> Result<Option<LockGuard>, LockError> {
    try_lock(open(path, false)?, path)
}

fn try_lock(file: File, path: &Path) -> Result<Option<LockGuard>, LockError> {
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

    #[test]
    fn shared_leases_coexist_and_keep_an_exclusive_lock_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let one = shared(&path).unwrap();
        let two = shared(&path).unwrap();
        assert!(try_exclusive(&path).unwrap().is_none());
        drop(one);
        assert!(try_exclusive(&path).unwrap().is_none());
        drop(two);
        assert!(try_exclusive(&path).unwrap().is_some());
    }

    #[test]
    fn a_symlinked_lock_file_is_neither_followed_nor_created() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let link = dir.path().join("lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(exclusive(&link).is_err());
        assert!(try_exclusive(&link).is_err());
        assert!(!target.exists());
        let missing = dir.path().join("missing");
        let err = try_exclusive_existing(&missing).unwrap_err();
        assert_eq!(err.source.kind(), std::io::ErrorKind::NotFound);
        assert!(!missing.exists());
    }
}
