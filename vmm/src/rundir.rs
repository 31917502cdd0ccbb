//! Per-VM run directories: `<runtime root>/<id>/` holds a VM's sockets, console log and the
//! logs of its helper processes, and a `lock` file its supervisor holds (flock) for as long
//! as it lives.
//!
//! Creation is atomic with respect to [`collect_stale`]: the directory is made as
//! `.<id>.new`, locked, then renamed, so a directory with a visible name is always locked by
//! a live supervisor — unless that supervisor died without cleaning up (SIGKILL). Its lock is
//! then free, and the next krunbox start removes the directory.
//!
//! The root is checked before every use ([`private_dir::ensure`]: ours, mode 0700, not a
//! link), since by default it is `/tmp/krunbox-$UID`, which any local user could create
//! first. Collection trusts no entry it did not make: it skips links, entries of other
//! owners, names that are not run ids and directories without a lock file, and removes with
//! `std::fs::remove_dir_all`, which works through directory fds and never follows a link.

use crate::io_error::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::lock::{self, LockGuard};
use crate::paths::RUNTIME_SETTING;
use crate::private_dir::{self, PrivateDirError};

/// The name of the lock file in each run directory.
pub const LOCK_FILE: &str = "lock";

/// A `.new` directory older than this is an abandoned creation.
const ABANDONED_CREATION: Duration = Duration::from_secs(60);

/// Why a run directory could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// A file operation.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
    /// The lock.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The runtime root is not a private directory of ours.
    #[error(transparent)]
    Root(#[from] PrivateDirError),
    /// Another VM has this id.
    #[error("run directory {0} already exists")]
    Exists(PathBuf),
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
    /// Creates `<root>/<id>` (mode 0700; the root too, if missing) and locks it.
    pub fn create(root: &Path, id: &str) -> Result<Self, RunDirError> {
        use std::os::unix::fs::DirBuilderExt;
        private_dir::ensure(root, RUNTIME_SETTING)?;
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
        Ok(std::fs::remove_dir_all(&self.path).map_err(io("remove", &self.path))?)
    }
}

/// Removes run directories whose supervisor is gone; returns what it removed. Fails only if
/// `root` is not a private directory of ours (it is created if missing).
pub fn collect_stale(root: &Path) -> Result<Vec<PathBuf>, RunDirError> {
    private_dir::ensure(root, RUNTIME_SETTING)?;
    let entries = std::fs::read_dir(root).map_err(io("list", root))?;
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Some(staging) = classify(&entry) else {
            tracing::debug!(entry = %path.display(), "not a run directory of ours; left alone");
            continue;
        };
        if staging {
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
        // An existing lock only: probing must not create files in what it does not know.
        match lock::try_exclusive_existing(&path.join(LOCK_FILE)) {
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
    Ok(removed)
}

/// `Some(staging)` for a real directory of ours named like a run directory (`<id>`) or its
/// creation (`.<id>.new`); `None` for anything else. Looks at the entry itself, never through
/// a link.
fn classify(entry: &std::fs::DirEntry) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = entry.metadata().ok()?; // lstat: a symlink stays a symlink
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return None;
    }
    let name = entry.file_name();
    let name = name.to_str()?;
    match name.strip_prefix('.') {
        Some(rest) => rest
            .strip_suffix(".new")
            .filter(|id| is_id(id))
            .map(|_| true),
        None => is_id(name).then_some(false),
    }
}

/// The shape of [`new_id`]: two lowercase hex numbers joined by `-`.
fn is_id(name: &str) -> bool {
    let hex = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    name.split_once('-')
        .is_some_and(|(time, pid)| hex(time) && hex(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_root() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        // 0700, as a runtime root must be (tempfile follows the umask).
        tempfile::Builder::new()
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn live_directories_survive_collection_and_dead_ones_do_not() {
        let root = private_root();
        let live = RunDir::create(root.path(), &new_id()).unwrap();
        std::fs::write(live.path().join("console.log"), b"x").unwrap();
        let dead = RunDir::create(root.path(), &new_id()).unwrap();
        let dead_path = dead.path().to_owned();
        drop(dead); // its supervisor "died" without removing it
        let live_id = live
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(matches!(
            RunDir::create(root.path(), &live_id),
            Err(RunDirError::Exists(_))
        ));
        let removed = collect_stale(root.path()).unwrap();
        assert_eq!(removed, std::slice::from_ref(&dead_path));
        assert!(!dead_path.exists());
        assert!(live.path().join("console.log").exists());
        let live_path = live.path().to_owned();
        live.remove().unwrap();
        assert!(!live_path.exists());
    }

    #[test]
    fn collection_leaves_links_foreign_names_and_unlocked_dirs_alone() {
        let root = private_root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("keep")).unwrap();
        // A link named like a run directory whose target has a free lock file.
        std::fs::write(outside.path().join(LOCK_FILE), b"").unwrap();
        let link = root.path().join(new_id());
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        // A directory that is no run directory, and a run-named one without a lock.
        std::fs::create_dir_all(root.path().join("notes/inner")).unwrap();
        std::fs::write(root.path().join("notes").join(LOCK_FILE), b"").unwrap();
        let unlocked = root.path().join(new_id());
        std::fs::create_dir(&unlocked).unwrap();
        assert!(collect_stale(root.path()).unwrap().is_empty());
        assert!(outside.path().join("keep").is_dir());
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert!(root.path().join("notes/inner").is_dir());
        assert!(unlocked.is_dir());
        assert!(
            !unlocked.join(LOCK_FILE).exists(),
            "probing created a lock file"
        );
    }

    #[test]
    fn a_symlinked_root_is_refused_and_nothing_below_its_target_removed() {
        let tmp = private_root();
        let target = tmp.path().join("precious");
        std::fs::create_dir(&target).unwrap();
        let planted = target.join(new_id());
        std::fs::create_dir(&planted).unwrap();
        std::fs::write(planted.join(LOCK_FILE), b"").unwrap();
        let root = tmp.path().join("krunbox-root");
        std::os::unix::fs::symlink(&target, &root).unwrap();
        assert!(matches!(
            collect_stale(&root),
            Err(RunDirError::Root(PrivateDirError::Symlink { .. }))
        ));
        assert!(matches!(
            RunDir::create(&root, &new_id()),
            Err(RunDirError::Root(PrivateDirError::Symlink { .. }))
        ));
        assert!(planted.is_dir());
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1);
    }

    #[test]
    fn run_ids_are_recognised() {
        assert!(is_id(&new_id()));
        for bad in [
            "", "-", "a-", "-1", "live", "1-2-3", "A-1", "../x-1", "1-2/",
        ] {
            assert!(!is_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(new_id(), new_id());
    }
}
