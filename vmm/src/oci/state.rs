//! Containers on disk: `ROOT/ID/` per container (`--root`, default `/run/krunbox-oci` as
//! root, else `oci/` in krunbox's runtime directory).
//!
//! ```text
//! ROOT/ID/
//!   container.json  bundle, run arguments, annotations, the monitor's pid, started or not
//!   start.fifo      the monitor blocks opening it until `start` opens its other end
//!   monitor.log     the monitor's log
//!   running         made by the monitor once the process runs in the guest
//!   exit            the process's exit code, written by the monitor at the end
//! ```

use crate::io_error::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `container.json`.
const RECORD_FILE: &str = "container.json";
/// The start FIFO.
pub const START_FIFO: &str = "start.fifo";
/// The monitor's log.
pub const MONITOR_LOG: &str = "monitor.log";
/// The exit code file.
pub const EXIT_FILE: &str = "exit";
/// Made by the monitor once the process runs in the guest.
pub const RUNNING_FILE: &str = "running";

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No such container.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// The ID is taken.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// An ID that is not a plain name.
    #[error("{0:?} is not a container ID (letters, digits, '_', '.', '-'; at most 128)")]
    BadId(String),
    /// A file.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
    /// A malformed record.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// What `create` recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The ID.
    pub id: String,
    /// The bundle's absolute path.
    pub bundle: PathBuf,
    /// `krunbox run`'s arguments.
    pub run_args: Vec<String>,
    /// The config's annotations.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The monitor's pid (0 until it runs).
    pub pid: u32,
    /// `start` was called.
    pub started: bool,
}

/// The OCI status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, not started.
    Created,
    /// Its process runs.
    Running,
    /// Its process ended.
    Stopped,
}

/// The containers under one root.
pub struct Root {
    dir: PathBuf,
}

impl Root {
    /// `--root` or the default.
    pub fn new(dir: Option<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.unwrap_or_else(|| {
            if nix::unistd::geteuid().is_root() {
                PathBuf::from("/run/krunbox-oci")
            } else {
                crate::paths::runtime_root().join("oci")
            }
        });
        crate::private_dir::create_all(&dir).map_err(io("create", &dir))?;
        Ok(Self { dir })
    }

    fn checked(id: &str) -> Result<(), StateError> {
        let plain = !id.is_empty()
            && id.len() <= 128
            && !id.starts_with('.')
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if plain {
            Ok(())
        } else {
            Err(StateError::BadId(id.to_owned()))
        }
    }

    /// The directory of container `id`.
    pub fn dir_of(&self, id: &str) -> Result<PathBuf, StateError> {
        Self::checked(id)?;
        Ok(self.dir.join(id))
    }

    /// Makes the directory of a new container and writes its record.
    pub fn create(&self, record: &Record) -> Result<PathBuf, StateError> {
        let dir = self.dir_of(&record.id)?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(record.id.clone()))
            }
            Err(e) => return Err(io("create", &dir)(e).into()),
        }
        let fifo = dir.join(START_FIFO);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| io("create", &fifo)(e.into()))?;
        self.write(record)?;
        Ok(dir)
    }

    /// Container `id`'s record.
    pub fn load(&self, id: &str) -> Result<Record, StateError> {
        let path = self.dir_of(id)?.join(RECORD_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_owned()))
            }
            Err(e) => return Err(io("read", &path)(e).into()),
        };
        serde_json::from_slice(&text).map_err(|source| StateError::Json { path, source })
    }

    /// Replaces a container's record (atomically).
    pub fn write(&self, record: &Record) -> Result<(), StateError> {
        let dir = self.dir_of(&record.id)?;
        let path = dir.join(RECORD_FILE);
        let text = serde_json::to_vec_pretty(record).map_err(|source| StateError::Json {
            path: path.clone(),
            source,
        })?;
        let temp = dir.join(".container.json.tmp");
        std::fs::write(&temp, text).map_err(io("write", &temp))?;
        Ok(std::fs::rename(&temp, &path).map_err(io("write", &path))?)
    }

    /// Removes a container's directory.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir_of(id)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &dir)(e).into()),
        }
    }
}

/// Whether `pid` is still this container's monitor (not a reused pid).
pub fn monitor_alive(pid: u32, dir: &Path) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie (ended, not yet reaped by the engine) has an empty command line.
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline
        .windows(needle.len().max(1))
        .any(|window| window == needle)
}

/// The status of `record`, whose directory is `dir`: running once the process runs in the
/// guest (the monitor's mark), created before.
pub fn status(record: &Record, dir: &Path) -> Status {
    if !monitor_alive(record.pid, dir) {
        return Status::Stopped;
    }
    if record.started && dir.join(RUNNING_FILE).exists() {
        Status::Running
    } else {
        Status::Created
    }
}
