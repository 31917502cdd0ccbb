//! krunbox starting a copy of itself for one job: the internal subcommands (one enum, whose
//! names are the constants every spawner uses), the command that starts one, and the JSON
//! event lines a job reports on its stdout to the process that started it.
//!
//! Every job runs this very executable (`current_exe`), never a copy: on macOS the binary
//! carries the hypervisor entitlement in its signature, which a copy or a re-signing per
//! sandbox would lose or forge.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
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
    /// Internal: keeps one warm pool filled (started by `krunbox pool start`).
    #[command(name = Job::POOL_KEEPER, hide = true)]
    PoolKeeper {
        /// The pool's directory.
        dir: PathBuf,
    },
    /// Internal: one OCI container's monitor (started by `krunbox-oci create`).
    #[command(name = Job::OCI_MONITOR, hide = true)]
    OciMonitor {
        /// The container's state directory.
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
    /// `krunbox __pool-keeper DIR`.
    pub const POOL_KEEPER: &'static str = "__pool-keeper";
    /// `krunbox __oci-monitor DIR`.
    pub const OCI_MONITOR: &'static str = "__oci-monitor";
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
            Job::PoolKeeper { dir } => crate::pool::keeper::main(dir),
            Job::OciMonitor { dir } => crate::oci::monitor_main(dir),
            Job::QemuSupervisor { run_dir } => crate::backend::qemu::supervisor::main(run_dir),
            Job::Net(args) => crate::backend::net::main(args),
            Job::KrunVmm { run_dir, no_enter } => {
                crate::backend::krun::child::main(run_dir, *no_enter)
            }
        }
    }
}

/// Starts `krunbox JOB DIR` detached: in a session of its own (no terminal signals, and it
/// outlives this process), stdin from /dev/null, stderr appended to `log`, and its stdout read
/// as events on a thread called `thread`. A failure names what could not be done.
pub fn spawn_detached<E>(
    job: &str,
    dir: &Path,
    log: &Path,
    thread: &str,
) -> Result<(Child, mpsc::Receiver<E>), String>
where
    E: DeserializeOwned + Send + 'static,
{
    use std::os::unix::process::CommandExt;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let (exe, mut command) = self::command(job).map_err(|e| format!("cannot find krunbox: {e}"))?;
    command
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file);
    // SAFETY: between fork and exec the closure only calls setsid(2), which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let events = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("its stdout is not a pipe"))
        .and_then(|out| read_events::<E>(out, thread));
    match events {
        Ok(events) => Ok((child, events)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("cannot read the events of {}: {e}", exe.display()))
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

/// A job's logging: to `writer` (its log file, or the stderr its starter pointed at one),
/// without colours, at `KRUNBOX_LOG`'s filter (default `info`). The `log` crate is not
/// captured: libkrun installs its own `log` logger, which panics if one is already set.
pub fn init_job_logging<W>(writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KRUNBOX_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
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
