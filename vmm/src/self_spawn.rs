//! krunbox starting a copy of itself for one job: the internal subcommands (one enum, whose
//! names are the constants every spawner uses), the command that starts one, and the JSON
//! event lines a job reports on its stdout to the process that started it.
//!
//! Every job runs this very executable (`current_exe`), never a copy: on macOS the binary
//! carries the hypervisor entitlement in its signature, which a copy or a re-signing per
//! sandbox would lose or forge.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ChildStdout, Command};
use std::sync::mpsc;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The internal subcommands (hidden from `--help`): each is one long-lived job of a VM.
#[derive(Debug, clap::Subcommand)]
pub enum Job {
    /// Internal: keeps one sandbox's VM running (started by `krunbox start`).
    #[command(name = Job::SANDBOX_MONITOR, hide = true)]
    SandboxMonitor {
        /// The sandbox's directory.
        dir: PathBuf,
    },
    /// Internal: supervises one QEMU VM (started by krunbox itself).
    #[command(name = Job::QEMU_SUPERVISOR, hide = true)]
    QemuSupervisor {
        /// The VM's run directory (also in the plan read from stdin; they must agree).
        run_dir: PathBuf,
    },
    /// Internal: the user-mode network of one VM (started by krunbox itself).
    #[command(name = Job::NET, hide = true)]
    Net(crate::backend::net::HelperArgs),
    /// Internal: the libkrun VMM of one VM (started by krunbox itself; never returns while the
    /// VM runs).
    #[command(name = Job::KRUN_VMM, hide = true)]
    KrunVmm {
        /// The VM's run directory, holding its configuration (krun-vm.json).
        run_dir: PathBuf,
        /// Apply the configuration through libkrun and report `configured`, but do not enter
        /// the VM: wait for the lifeline or a signal instead. Checks a configuration against
        /// the real libkrun on hosts that cannot run a VM (the tests do).
        #[arg(long)]
        no_enter: bool,
    },
}

impl Job {
    /// `krunbox __sandbox-monitor DIR`.
    pub const SANDBOX_MONITOR: &'static str = "__sandbox-monitor";
    /// `krunbox __qemu-supervisor RUNDIR` (the plan on stdin).
    pub const QEMU_SUPERVISOR: &'static str = "__qemu-supervisor";
    /// `krunbox __net --socket PATH --config JSON ...`.
    pub const NET: &'static str = "__net";
    /// `krunbox __krun-vmm RUNDIR [--no-enter]`.
    pub const KRUN_VMM: &'static str = "__krun-vmm";

    /// Runs the job in this process (the copy); returns its exit status. Each job sets up its
    /// own logging: to its run directory, its sandbox's `monitor.log`, or stderr.
    pub fn main(&self) -> i32 {
        match self {
            Job::SandboxMonitor { dir } => crate::sandbox::monitor::main(dir),
            Job::QemuSupervisor { run_dir } => crate::backend::qemu::supervisor::main(run_dir),
            Job::Net(args) => crate::backend::net::main(args),
            Job::KrunVmm { run_dir, no_enter } => {
                crate::backend::krun::child::main(run_dir, *no_enter)
            }
        }
    }
}

/// `krunbox SUBCOMMAND` of this very executable, and the executable's path (for errors).
pub fn command(subcommand: &str) -> std::io::Result<(PathBuf, Command)> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(&exe);
    command.arg(subcommand);
    Ok((exe, command))
}

/// Reports `event` to the starting process: one JSON line on stdout, flushed. A parent that is
/// gone (EPIPE; Rust ignores SIGPIPE) is not an error here: each job watches its lifeline.
pub fn emit<E: Serialize>(event: &E) {
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The events a job writes on `stdout`, read on a thread called `name` until the job closes
/// its stdout or the receiver is dropped; a line that is not an event is logged and skipped.
pub fn read_events<E>(stdout: ChildStdout, name: &str) -> std::io::Result<mpsc::Receiver<E>>
where
    E: DeserializeOwned + Send + 'static,
{
    let (tx, events) = mpsc::channel();
    let job = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<E>(&line) {
                    Ok(event) => {
                        if tx.send(event).is_err() {
                            break;
                        }
                    }
                    Err(err) => tracing::warn!(%err, %line, %job, "unreadable event line"),
                }
            }
        })?;
    Ok(events)
}
