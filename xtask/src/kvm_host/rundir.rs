//! A run's directory, `target/kvm-host/run-XXXXXX/`: its sockets, logs, initramfs and the
//! results share. Removed when dropped; it holds a lock on its `lock` file for its whole life,
//! so the next run removes the directory of a harness that was SIGKILLed (its lock is free).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why the run directory could not be made.
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
    /// Unix socket paths are limited to 108 bytes.
    #[error("{0} is too long a path for the run's Unix sockets; set a shorter CARGO_TARGET_DIR")]
    TooLong(PathBuf),
}

/// The longest socket path the run makes, beyond its directory (`/results.sock`).
const SOCKET_SUFFIX: usize = 16;

/// A locked run directory.
pub struct RunDir {
    // Dropped in this order: the lock is released before the directory goes.
    _lock: std::fs::File,
    dir: tempfile::TempDir,
}

impl RunDir {
    /// Creates a run directory in `parent`, first removing those of dead runs.
    pub fn create(parent: &Path) -> Result<Self, RunDirError> {
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| RunDirError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        remove_abandoned(parent);
        let dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(parent)
            .map_err(io("create a directory in", parent))?;
        if dir.path().as_os_str().len() + SOCKET_SUFFIX > 107 {
            return Err(RunDirError::TooLong(dir.path().to_owned()));
        }
        let lock_path = dir.path().join("lock");
        let lock = std::fs::File::create(&lock_path).map_err(io("create", &lock_path))?;
        if !try_lock(&lock) {
            return Err(RunDirError::Io {
                action: "lock",
                path: lock_path,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self { _lock: lock, dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn try_lock(file: &std::fs::File) -> bool {
    // SAFETY: flock(2) on a descriptor this function borrows; no pointers.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes the `run-*` directories in `parent` whose lock nobody holds. One without a lock
/// file yet is being created (or its creator died in between): left alone.
fn remove_abandoned(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("run-") {
            continue;
        }
        let Ok(lock) = std::fs::File::open(path.join("lock")) else {
            continue;
        };
        if try_lock(&lock) {
            eprintln!(
                "kvm-host: removing {} (left by a killed run)",
                path.display()
            );
            if let Err(err) = std::fs::remove_dir_all(&path) {
                eprintln!("kvm-host: cannot remove {}: {err}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_run_is_kept_and_an_abandoned_one_removed() {
        let parent = tempfile::tempdir().unwrap();
        let live = RunDir::create(parent.path()).unwrap();
        let abandoned = parent.path().join("run-dead");
        std::fs::create_dir(&abandoned).unwrap();
        std::fs::write(abandoned.join("lock"), b"").unwrap();
        let unrelated = parent.path().join("keep");
        std::fs::create_dir(&unrelated).unwrap();

        let second = RunDir::create(parent.path()).unwrap();
        assert!(live.path().is_dir(), "the live run's directory is kept");
        assert!(!abandoned.exists(), "the abandoned one is removed");
        assert!(unrelated.is_dir());
        let (first, second_path) = (live.path().to_owned(), second.path().to_owned());
        drop(live);
        drop(second);
        assert!(!first.exists() && !second_path.exists(), "removed on drop");
    }
}
