//! The command line: one module per subcommand.

pub mod doctor;
pub mod images;
pub mod kernel;
pub mod net_args;
pub mod pool;
pub mod privileges;
pub mod profile;
pub mod review;
pub mod run;
pub mod sandbox;
pub mod serve;
pub mod session;
pub mod share_args;
pub mod ssh_args;
pub mod table;
pub mod terminal;
pub mod timings;
pub mod vm_args;
pub mod volume;

/// krunbox runs commands in micro-VMs, each with its own kernel.
#[derive(Debug, clap::Parser)]
// A later option replaces an earlier one: a profile's options come first (`cli::profile`).
#[command(name = "krunbox", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run a command in a new micro-VM.
    Run(Box<run::RunArgs>),
    /// Download an image into the image store (or import a local layout or archive).
    Pull(images::PullArgs),
    /// List the images in the store.
    Images(images::ImagesArgs),
    /// Remove images from the store.
    Rmi(images::RmiArgs),
    /// Remove everything in the store that no image references.
    Prune(images::PruneArgs),
    /// Create a named sandbox (a micro-VM that keeps running between commands).
    Create(Box<sandbox::CreateArgs>),
    /// Boot sandboxes.
    Start(sandbox::StartArgs),
    /// Run a command in a running sandbox.
    Exec(sandbox::ExecArgs),
    /// Copy files between the host and a running sandbox.
    Cp(sandbox::CpArgs),
    /// Stop sandboxes.
    Stop(sandbox::StopArgs),
    /// Pause running sandboxes (frozen, memory kept, no CPU).
    Pause(sandbox::PauseArgs),
    /// Resume paused sandboxes.
    Resume(sandbox::ResumeArgs),
    /// Remove sandboxes.
    Rm(sandbox::RmArgs),
    /// List sandboxes.
    Ps(sandbox::PsArgs),
    /// Print sandboxes' configuration and state as JSON.
    Inspect(sandbox::InspectArgs),
    /// Print a sandbox's console (kernel and guest agent messages).
    Logs(sandbox::LogsArgs),
    /// Show the CPU and memory use of running sandboxes.
    Stats(sandbox::StatsArgs),
    /// Show what this host can run, per backend, and why.
    Doctor,
    /// Serve krunbox's HTTP API (for programs and the SDKs) on a Unix socket or TCP.
    Serve(serve::ServeArgs),
    /// Serve MCP on stdin/stdout: tools for an agent to create sandboxes, run commands in
    /// them, read and write their files, and stop them.
    Mcp,
    /// Keep booted VMs ready for `krunbox run` (warm pools).
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Show what the guest changed in a --workspace=review copy (A added, M modified, D
    /// deleted, P permissions, T type; `!`: the host's file changed too).
    Diff(review::DiffArgs),
    /// Write a --workspace=review copy's changes into the workspace (all, or the PATHs
    /// named); refused for a file that changed on the host since the copy was made.
    Accept(review::ChoiceArgs),
    /// Put a --workspace=review copy back as the workspace has it (all, or the PATHs named).
    Reject(review::ChoiceArgs),
    /// Manage named volumes (directories kept across sandboxes, shared with `-v NAME:/path`).
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Manage the QEMU backend's guest kernels: krunbox's own (the default once installed)
    /// and Debian's cloud kernel (the fallback).
    #[command(subcommand)]
    Kernel(kernel::KernelCommand),
    /// krunbox's own jobs (hidden): the VM's supervisor, VMM, gateway, sandbox monitor.
    #[command(flatten)]
    Internal(crate::self_spawn::Job),
}

/// Why clap refused arguments, in one line (its full text adds usage, for a terminal): for
/// arguments krunbox builds itself from a request (`krunbox serve`) or a bundle (`krunbox-oci`).
pub fn clap_reason(err: &clap::Error) -> String {
    let text = err.render().to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned()
}

/// Runs `op` on each of `names`, as `docker stop a b` does: with one name its error is the
/// command's; with several, each failure is reported on stderr and the rest go on. Returns
/// how many failed.
pub fn for_each_name<E: std::fmt::Display>(
    names: &[String],
    mut op: impl FnMut(&str) -> Result<(), E>,
) -> Result<usize, E> {
    if let [name] = names {
        op(name)?;
        return Ok(0);
    }
    let mut failed = 0;
    for name in names {
        if let Err(err) = op(name) {
            eprintln!("krunbox: {err}");
            failed += 1;
        }
    }
    Ok(failed)
}
