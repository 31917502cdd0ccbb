//! Named sandboxes that keep running between commands (`krunbox create/start/exec/cp/stop/
//! rm/ps/logs/stats/inspect`).
//!
//! A sandbox is a directory under `$DATA/sandboxes/` ([`store`]) holding its spec, its last
//! state and its locks — one lock per sandbox, none shared, so many sandboxes start and stop
//! in parallel. Its VM is run by a detached [`monitor`] process that outlives the CLI; other
//! commands find the VM's agent through `state.json` and reach it directly over its socket
//! ([`attach`]). Everything below the monitor is the ordinary [`crate::backend`] lifecycle, so
//! a sandbox works on any backend.

pub mod attach;
pub mod copy;
pub mod lifecycle;
pub mod monitor;
pub mod name;
pub mod spec;
pub mod state;
pub mod stats;
pub mod store;

use std::time::Duration;

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A bad name.
    #[error(transparent)]
    Name(#[from] name::InvalidName),
    /// No such sandbox.
    #[error("no sandbox named {0:?} (see `krunbox ps -a`)")]
    NotFound(String),
    /// The name is taken.
    #[error("a sandbox named {0:?} already exists (remove it with `krunbox rm {0}`, or pick another --name)")]
    Exists(String),
    /// A second monitor for one sandbox.
    #[error("sandbox {0:?} is already running")]
    AlreadyRunning(String),
    /// `rm` of a running sandbox without `-f`.
    #[error("sandbox {0:?} is running: stop it first (`krunbox stop {0}`) or use `krunbox rm -f`")]
    Running(String),
    /// The sandbox must run for this.
    #[error("sandbox {name:?} is not running ({status}); start it with `krunbox start {name}`")]
    NotRunning {
        /// Which.
        name: String,
        /// What it is instead.
        status: String,
    },
    /// The sandbox is paused, and this needs it running.
    #[error("sandbox {0:?} is paused: resume it first (`krunbox resume {0}`)")]
    Paused(String),
    /// The monitor did not carry out a pause or resume request in time.
    #[error("sandbox {name:?} did not {action} within {waited:?} (see its monitor.log: `krunbox logs --monitor {name}`)")]
    NoAnswer {
        /// Which.
        name: String,
        /// "pause" or "resume".
        action: &'static str,
        /// How long we waited.
        waited: Duration,
    },
    /// Starting failed.
    #[error("sandbox {name:?} did not start: {message}")]
    StartFailed {
        /// Which.
        name: String,
        /// Why.
        message: String,
    },
    /// A monitor that ignores SIGTERM and SIGKILL.
    #[error("sandbox {0:?} did not stop (its monitor does not exit)")]
    Unresponsive(String),
    /// A file operation.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
    /// A malformed sandbox file.
    #[error("malformed sandbox file: {0}")]
    Json(serde_json::Error),
    /// A lock.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// The data directory is not ours.
    #[error(transparent)]
    DataDir(#[from] crate::private_dir::PrivateDirError),
}
