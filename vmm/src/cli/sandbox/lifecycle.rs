//! `krunbox start`, `stop`, `pause`, `resume` and `rm`: each acts on several sandboxes,
//! reporting failures one by one.

use std::time::Duration;

use super::SandboxCliError;
use crate::sandbox::store::{Sandbox, Store};
use crate::sandbox::{lifecycle, SandboxError};

/// Boot sandboxes; returns once each one's guest agent answers.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Stop sandboxes: the guest is asked to power off; after --time seconds the VM is stopped
/// hard.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Seconds to wait for the guest to power off before stopping the VM hard.
    #[arg(short = 't', long = "time", value_name = "SECS", default_value_t = 10)]
    pub time: u64,
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Pause running sandboxes: each VM is frozen, its memory kept and its CPU use zero, until
/// `krunbox resume`. Commands in it stop where they are; `exec` and `cp` wait for a resume.
/// The guest's clock is right again once resumed.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Resume paused sandboxes: their commands go on where they stopped.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Remove sandboxes (their state, logs and everything their VM left).
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Remove running sandboxes too (their VMs are stopped hard first).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Runs `op` on each named sandbox, reporting failures one by one (like `docker stop a b`).
fn each(
    names: &[String],
    mut op: impl FnMut(Sandbox) -> Result<(), SandboxError>,
) -> Result<i32, SandboxCliError> {
    let store = Store::new()?;
    match crate::cli::for_each_name(names, |name| store.open(name).and_then(&mut op))? {
        0 => Ok(0),
        n => Err(SandboxCliError::Some(n)),
    }
}

/// `krunbox start`.
pub fn start(args: StartArgs) -> Result<i32, SandboxCliError> {
    each(&args.names, |sandbox| {
        match lifecycle::start(&sandbox)? {
            Some(boot_ms) => tracing::info!(name = sandbox.name(), boot_ms, "started"),
            None => tracing::info!(name = sandbox.name(), "already running"),
        }
        println!("{}", sandbox.name());
        Ok(())
    })
}

/// `krunbox stop`.
pub fn stop(args: StopArgs) -> Result<i32, SandboxCliError> {
    let grace = Duration::from_secs(args.time);
    each(&args.names, |sandbox| {
        lifecycle::stop(&sandbox, grace)?;
        println!("{}", sandbox.name());
        Ok(())
    })
}

/// `krunbox rm`.
pub fn rm(args: RmArgs) -> Result<i32, SandboxCliError> {
    each(&args.names, |sandbox| {
        let name = sandbox.name().to_owned();
        lifecycle::remove(sandbox, args.force)?;
        println!("{name}");
        // Removing the sandbox released its copy unless it holds undecided changes.
        let kept = crate::review::ReviewStore::new().is_ok_and(|store| store.open(&name).is_ok());
        if kept {
            eprintln!(
                "krunbox: kept the undecided changes of {name}'s workspace copy: `krunbox diff \
                 {name}`, then `krunbox accept {name}` or `krunbox reject {name}`"
            );
        }
        Ok(())
    })
}

/// `krunbox pause`.
pub fn pause(args: PauseArgs) -> Result<i32, SandboxCliError> {
    each(&args.names, |sandbox| {
        if !lifecycle::pause(&sandbox)? {
            tracing::info!(name = sandbox.name(), "already paused");
        }
        println!("{}", sandbox.name());
        Ok(())
    })
}

/// `krunbox resume`.
pub fn resume(args: ResumeArgs) -> Result<i32, SandboxCliError> {
    each(&args.names, |sandbox| {
        if !lifecycle::resume(&sandbox)? {
            tracing::info!(name = sandbox.name(), "not paused");
        }
        println!("{}", sandbox.name());
        Ok(())
    })
}
