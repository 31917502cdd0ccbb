//! `krunbox create/start/exec/stop/rm/ps/inspect/logs/cp/stats`: named sandboxes that keep
//! running between commands (see `crate::sandbox`).
//!
//! One module per command; [`SandboxCliError`] is theirs in common.

mod cp;
mod create;
mod exec;
mod lifecycle;
mod list;
mod logs;
mod stats;

pub use cp::{cp, CpArgs};
pub use create::{create, create_sandbox, sandbox_spec, CreateArgs, ExecDefaults};
pub use exec::{exec, ExecArgs, ExecContext};
pub use lifecycle::{
    pause, resume, rm, start, stop, PauseArgs, ResumeArgs, RmArgs, StartArgs, StopArgs,
};
pub use list::{described, inspect, ps, InspectArgs, PsArgs};
pub use logs::{logs, LogsArgs};
pub use stats::{measure, stats, StatsArgs};

use super::session::SessionError;
use super::ssh_args::SshAgentError;
use crate::sandbox::SandboxError;

/// Why a sandbox command failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxCliError {
    /// Bad input.
    #[error("{0}")]
    Usage(String),
    /// The sandbox.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The image.
    #[error(transparent)]
    Image(Box<crate::guest::rootfs::ImageError>),
    /// Shared directories.
    #[error(transparent)]
    Shares(#[from] crate::guest::shares::ShareError),
    /// `--ssh`.
    #[error(transparent)]
    SshAgent(#[from] SshAgentError),
    /// Network options.
    #[error(transparent)]
    Network(#[from] super::net_args::NetArgsError),
    /// `--user`.
    #[error(transparent)]
    User(#[from] krunbox_image::user::UserError),
    /// The sandbox's `exec` defaults from the image and the command line.
    #[error(transparent)]
    Command(#[from] crate::guest::command::CommandError),
    /// `exec`.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// `cp`.
    #[error(transparent)]
    Copy(#[from] crate::sandbox::copy::CopyError),
    /// The sandbox's agent.
    #[error("sandbox {name:?}: {error}")]
    Agent {
        /// Which.
        name: String,
        /// What failed (not a `source`: the message already has it).
        error: krunbox_protocol::client::ClientError,
    },
    /// A warm pool.
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    /// Some of several sandboxes failed (each was reported).
    #[error("{0} of the sandboxes failed")]
    Some(usize),
}

impl From<crate::guest::rootfs::ImageError> for SandboxCliError {
    fn from(err: crate::guest::rootfs::ImageError) -> Self {
        Self::Image(Box::new(err))
    }
}
