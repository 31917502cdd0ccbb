//! Advisory file locks (`flock`) between krunbox processes sharing one store.
//!
//! flock locks belong to the open file description, so two `Store`s in one process contend
//! exactly like two processes do (the tests rely on that), and the kernel drops them when a
//! process dies, so a killed pull never leaves the store locked.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("locking {path}: {source}")]
pub struct LockError {
    /// The lock file.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Many holders (readers, pulls).
    Shared,
    /// One holder (garbage collection, unpacking).
    Exclusive,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct FileLock {
    lock: Flock<File>,
    path: PathBuf,
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

fn arg(kind: LockKind, blocking: bool) -> FlockArg {
    match (kind, blocking) {
        (LockKind::Shared, true) => FlockArg::LockShared,
        (LockKind::Exclusive, true) => FlockArg::LockExclusive,
        (LockKind::Shared, false) => FlockArg::LockSharedNonblock,
        (LockKind::Exclusive, false) => FlockArg::LockExclusiveNonblock,
    }
}

impl FileLock {
    /// Waits for the lock.
    pub fn acquire(path: &Path, kind: LockKind) -> Result<Self, LockError> {
        let file = open(path)?;
        tracing::trace!(path = %path.display(), ?kind, "waiting for lock");
        let lock = Flock::lock(file, arg(kind, true)).map_err(|(_, errno)| LockError {
            path: path.to_owned(),
            source: errno.into(),
        })?;
        Ok(Self {
            lock,
            path: path.to_owned(),
        })
    }

    /// Takes the lock if nobody holds a conflicting one.
    pub fn try_acquire(path: &Path, kind: LockKind) -> Result<Option<Self>, LockError> {
        let file = open(path)?;
        match Flock::lock(file, arg(kind, false)) {
            Ok(lock) => Ok(Some(Self {
                lock,
                path: path.to_owned(),
            })),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(LockError {
                path: path.to_owned(),
                source: errno.into(),
            }),
        }
    }

    /// Converts an exclusive lock to a shared one.
    pub fn downgrade(&self) -> Result<(), LockError> {
        self.lock
            .relock(FlockArg::LockShared)
            .map_err(|errno| LockError {
                path: self.path.clone(),
                source: errno.into(),
            })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lock");
        let a = FileLock::acquire(&path, LockKind::Shared).unwrap();
        let b = FileLock::try_acquire(&path, LockKind::Shared).unwrap();
        assert!(b.is_some());
        assert!(FileLock::try_acquire(&path, LockKind::Exclusive)
            .unwrap()
            .is_none());
        drop((a, b));
        let x = FileLock::acquire(&path, LockKind::Exclusive).unwrap();
        assert!(FileLock::try_acquire(&path, LockKind::Shared)
            .unwrap()
            .is_none());
        x.downgrade().unwrap();
        assert!(FileLock::try_acquire(&path, LockKind::Shared)
            .unwrap()
            .is_some());
    }
}
