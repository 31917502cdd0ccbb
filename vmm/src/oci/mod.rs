//! `krunbox-oci`: the OCI runtime command line (what runc and crun speak), so that podman,
//! containerd and Kubernetes (a RuntimeClass) run each container as a krunbox micro-VM.
//!
//! `krunbox` is `krunbox-oci` when it is called by that name (a symlink: the one binary, never
//! a copy), or as `krunbox oci ...`.
//!
//! A container's life:
//! 1. `create --bundle B --pid-file P [--console-socket S] ID`: reads `B/config.json`
//!    ([`bundle`]), records the container ([`state`]) and starts its monitor — `krunbox
//!    __oci-monitor DIR`, with the engine's stdio (or, with a console socket, a terminal whose
//!    master end went to the engine) — whose pid goes to P. The monitor waits on a FIFO.
//! 2. `start ID`: opens the FIFO. The monitor goes on as `krunbox run` with the bundle's
//!    settings: it boots the VM, runs the process in the guest with the engine's stdio, and
//!    exits with the process's exit code, which the engine reads from the monitor's pid.
//! 3. `kill ID SIG`: signals the monitor, which passes TERM, INT, HUP and QUIT to the guest
//!    process (as `krunbox run` does); KILL ends the monitor and with it the VM.
//! 4. `delete ID`: removes the record (with `--force`, kills a running monitor first).

pub mod bundle;
pub mod state;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use state::{Record, Root, StateError, Status};

/// The OCI runtime spec version this runtime follows.
const OCI_VERSION: &str = "1.0.2";
/// How long `start` waits for the monitor to open its FIFO (the first thing it does).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// krunbox as an OCI runtime: each container is a micro-VM (see `krunbox-oci --help` of each
/// command).
#[derive(Debug, clap::Parser)]
#[command(name = "krunbox-oci", version)]
pub struct OciCli {
    /// Where containers' state is kept (default /run/krunbox-oci as root).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Also write errors to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// `text` or `json` (one object per line, as runc writes them).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    pub log_format: String,
    /// Accepted for runc compatibility (cgroups are the VM's own).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility.
    #[arg(long, global = true)]
    pub debug: bool,
    /// The operation.
    #[command(subcommand)]
    pub command: OciCommand,
}

/// The runtime operations.
#[derive(Debug, clap::Subcommand)]
pub enum OciCommand {
    /// Create a container from a bundle (its process waits for `start`).
    Create {
        /// The bundle directory (config.json and the root filesystem).
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Write the container's pid (its monitor's) here.
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// A Unix socket to send the terminal's master end to (process.terminal).
        #[arg(long, value_name = "SOCKET")]
        console_socket: Option<PathBuf>,
        /// Accepted for runc compatibility.
        #[arg(long)]
        no_pivot: bool,
        /// Accepted for runc compatibility.
        #[arg(long)]
        no_new_keyring: bool,
        /// The container's ID.
        id: String,
    },
    /// Start a created container's process.
    Start {
        /// The container's ID.
        id: String,
    },
    /// Print a container's state as JSON.
    State {
        /// The container's ID.
        id: String,
    },
    /// Send a signal to a container's process (default TERM).
    Kill {
        /// Accepted for runc compatibility (there is one process).
        #[arg(short, long)]
        all: bool,
        /// The container's ID.
        id: String,
        /// The signal: a name (TERM, SIGKILL) or number.
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Remove a container's state (`--force`: kill it first).
    Delete {
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
        /// The container's ID.
        id: String,
    },
    /// Print what this runtime supports, as JSON.
    Features,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The bundle.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// `krunbox run` refuses the settings.
    #[error("the bundle's settings: {0}")]
    Settings(String),
    /// The container is not in the state the operation needs.
    #[error("container {id:?} is {status}: {need}")]
    WrongState {
        /// Which.
        id: String,
        /// Its status.
        status: &'static str,
        /// What the operation needs.
        need: &'static str,
    },
    /// `start` of a container whose config has no process.
    #[error("container {0:?} has no process to start (its config.json has none)")]
    NoProcess(String),
    /// A bad signal.
    #[error("unknown signal {0:?}")]
    Signal(String),
    /// A system call.
    #[error("{0}")]
    Os(String),
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Created => "created",
        Status::Running => "running",
        Status::Stopped => "stopped",
    }
}

/// `krunbox run`'s parser, for checking a bundle's settings at create and using them at start.
#[derive(Debug, clap::Parser)]
#[command(name = "run", args_override_self = true)]
struct RunCommand {
    #[command(flatten)]
    args: crate::cli::run::RunArgs,
}

fn run_args(args: &[String]) -> Result<crate::cli::run::RunArgs, OciError> {
    <RunCommand as clap::Parser>::try_parse_from(
        std::iter::once("run").chain(args.iter().map(String::as_str)),
    )
    .map(|c| c.args)
    .map_err(|e| OciError::Settings(crate::cli::clap_reason(&e)))
}

/// `krunbox-oci ARGS` (ARGS from the program's name on).
pub fn main(argv: Vec<std::ffi::OsString>) -> i32 {
    let cli = <OciCli as clap::Parser>::parse_from(argv);
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("krunbox-oci: {err}");
            if let Some(log) = &cli.log {
                log_error(log, &cli.log_format, &err.to_string());
            }
            1
        }
    }
}

/// An error line in the engine's log file, in its format.
fn log_error(path: &Path, format: &str, message: &str) {
    let line = if format == "json" {
        serde_json::json!({ "level": "error", "msg": message }).to_string()
    } else {
        format!("krunbox-oci: {message}")
    };
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

fn run(cli: &OciCli) -> Result<i32, OciError> {
    // Every operation but `features` works on the state directory.
    let root = || Root::new(cli.root.clone());
    match &cli.command {
        OciCommand::Features => {
            println!("{}", features());
            Ok(0)
        }
        OciCommand::Create {
            bundle,
            pid_file,
            console_socket,
            id,
            ..
        } => create(
            &root()?,
            bundle,
            pid_file.as_deref(),
            console_socket.as_deref(),
            id,
        ),
        OciCommand::Start { id } => start(&root()?, id),
        OciCommand::State { id } => {
            let root = root()?;
            let record = root.load(id)?;
            let dir = root.dir_of(id)?;
            let status = state::status(&record, &dir);
            let out = serde_json::json!({
                "ociVersion": OCI_VERSION,
                "id": record.id,
                "status": status,
                "pid": if status == Status::Stopped { 0 } else { record.pid },
                "bundle": record.bundle,
                "annotations": record.annotations,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            Ok(0)
        }
        OciCommand::Kill { id, signal, .. } => {
            let root = root()?;
            let record = root.load(id)?;
            let dir = root.dir_of(id)?;
            let status = state::status(&record, &dir);
            if status == Status::Stopped {
                return Err(OciError::WrongState {
                    id: id.clone(),
                    status: "stopped",
                    need: "only a created or running container can be signalled",
                });
            }
            let signal = parse_signal(signal)?;
            signal_monitor(record.pid, signal)
        }
        OciCommand::Delete { force, id } => {
            let root = root()?;
            let record = root.load(id)?;
            let dir = root.dir_of(id)?;
            let status = state::status(&record, &dir);
            if status != Status::Stopped {
                if !force {
                    return Err(OciError::WrongState {
                        id: id.clone(),
                        status: status_word(status),
                        need: "stop it first, or delete --force",
                    });
                }
                signal_monitor(record.pid, nix::sys::signal::Signal::SIGKILL)?;
                let deadline = Instant::now() + Duration::from_secs(10);
                while state::monitor_alive(record.pid, &dir) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            root.remove(id)?;
            Ok(0)
        }
    }
}

fn parse_signal(text: &str) -> Result<nix::sys::signal::Signal, OciError> {
    use std::str::FromStr;
    let bad = || OciError::Signal(text.to_owned());
    if let Ok(number) = text.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(number).map_err(|_| bad());
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name).map_err(|_| bad())
}

fn signal_monitor(pid: u32, signal: nix::sys::signal::Signal) -> Result<i32, OciError> {
    let pid = i32::try_from(pid).map_err(|_| OciError::Os(format!("bad pid {pid}")))?;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(0),
        Err(e) => Err(OciError::Os(format!("signal {signal} to {pid}: {e}"))),
    }
}

fn create(
    root: &Root,
    bundle: &Path,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
    id: &str,
) -> Result<i32, OciError> {
    let bundle = std::fs::canonicalize(bundle).map_err(|e| bundle::BundleError::Config {
        path: bundle.to_owned(),
        message: e.to_string(),
    })?;
    let container = bundle::load(&bundle)?;
    // Settings krunbox run would refuse are refused now, not at start.
    if !container.run_args.is_empty() {
        run_args(&container.run_args)?;
    }
    let mut record = Record {
        id: id.to_owned(),
        bundle,
        run_args: container.run_args.clone(),
        annotations: container.annotations.clone(),
        pid: 0,
        started: false,
    };
    let dir = root.create(&record)?;
    let spawned = spawn_monitor(&dir, console_socket, container.terminal);
    let pid = match spawned {
        Ok(pid) => pid,
        Err(err) => {
            let _ = root.remove(id);
            return Err(err);
        }
    };
    record.pid = pid;
    root.write(&record)?;
    if let Some(path) = pid_file {
        std::fs::write(path, pid.to_string())
            .map_err(|e| OciError::Os(format!("write {}: {e}", path.display())))?;
    }
    Ok(0)
}

/// Starts `krunbox __oci-monitor DIR` in a session of its own with the engine's stdio, or a
/// new terminal whose master end is sent to `console_socket`.
fn spawn_monitor(
    dir: &Path,
    console_socket: Option<&Path>,
    terminal: bool,
) -> Result<u32, OciError> {
    let exe = std::env::current_exe().map_err(|e| OciError::Os(format!("this program: {e}")))?;
    let mut command = std::process::Command::new(exe);
    command.arg(crate::self_spawn::Job::OCI_MONITOR).arg(dir);
    let console = match (console_socket, terminal) {
        (Some(socket), true) => Some(console(socket)?),
        _ => None,
    };
    if let Some(slave) = &console {
        let handle = |fd: &std::os::fd::OwnedFd| {
            fd.try_clone()
                .map(std::process::Stdio::from)
                .map_err(|e| OciError::Os(format!("the terminal: {e}")))
        };
        command
            .stdin(handle(slave)?)
            .stdout(handle(slave)?)
            .stderr(handle(slave)?);
    }
    let with_terminal = console.is_some();
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions
    // (setsid, ioctl) on the child's own descriptors.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            // The request type differs between libcs (c_ulong on macOS, c_int on musl).
            #[allow(clippy::useless_conversion)]
            if with_terminal && libc::ioctl(0, libc::TIOCSCTTY.into(), 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| OciError::Os(format!("start the container's monitor: {e}")))?;
    Ok(child.id())
}

/// A new terminal: its master end sent to the engine over `socket` (SCM_RIGHTS), its slave end
/// returned for the monitor.
fn console(socket: &Path) -> Result<std::os::fd::OwnedFd, OciError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let os = |what: &str, e: nix::errno::Errno| OciError::Os(format!("{what}: {e}"));
    let pty = nix::pty::openpty(None, None).map_err(|e| os("open a terminal", e))?;
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| OciError::Os(format!("connect to {}: {e}", socket.display())))?;
    let fds = [pty.master.as_raw_fd()];
    let payload = [std::io::IoSlice::new(b"/dev/ptmx")];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &payload,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| os("send the terminal to the console socket", e))?;
    Ok(pty.slave)
}

fn start(root: &Root, id: &str) -> Result<i32, OciError> {
    let mut record = root.load(id)?;
    let dir = root.dir_of(id)?;
    let status = state::status(&record, &dir);
    if status != Status::Created || record.started {
        return Err(OciError::WrongState {
            id: id.to_owned(),
            status: if record.started && status == Status::Created {
                "starting"
            } else {
                status_word(status)
            },
            need: "only a created container can be started, once",
        });
    }
    if record.run_args.is_empty() {
        return Err(OciError::NoProcess(id.to_owned()));
    }
    record.started = true;
    root.write(&record)?;
    if let Err(err) = write_start(&record, &dir) {
        // Nothing reached the monitor: the container is still only created.
        record.started = false;
        root.write(&record)?;
        return Err(err);
    }
    wait_running(&record, &dir)
}

/// Writes the start FIFO's byte, which the monitor reads once the VM has booted.
fn write_start(record: &Record, dir: &Path) -> Result<(), OciError> {
    let fifo = dir.join(state::START_FIFO);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
        {
            Ok(mut writer) => {
                return writer
                    .write_all(b"1")
                    .map_err(|e| OciError::Os(format!("start {}: {e}", record.id)));
            }
            // No reader yet: the monitor has only just been started.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                let log = dir.join(state::MONITOR_LOG);
                if !state::monitor_alive(record.pid, dir) {
                    return Err(OciError::Os(format!(
                        "container {}'s monitor is gone (see {})",
                        record.id,
                        log.display()
                    )));
                }
                if Instant::now() > deadline {
                    return Err(OciError::Os(format!(
                        "container {}'s monitor did not open its start FIFO within \
                         {START_TIMEOUT:?} (see {})",
                        record.id,
                        log.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(OciError::Os(format!("open {}: {e}", fifo.display()))),
        }
    }
}

/// How long `start` waits for the process to run: the VM's boot (krunbox run's boot
/// timeout) and a margin.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(90);

/// Returns once the process runs in the guest (as runc's `start` returns once the process is
/// exec'd), so a signal the engine sends next reaches the process, not a booting VM; or once
/// the monitor ended (the process ran and ended, or the VM failed: the engine reads which
/// from the exit code).
fn wait_running(record: &Record, dir: &Path) -> Result<i32, OciError> {
    let deadline = Instant::now() + RUNNING_TIMEOUT;
    while !dir.join(state::RUNNING_FILE).exists() && state::monitor_alive(record.pid, dir) {
        if Instant::now() > deadline {
            return Err(OciError::Os(format!(
                "container {}'s process did not start within {RUNNING_TIMEOUT:?} (see {})",
                record.id,
                dir.join(state::MONITOR_LOG).display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(0)
}

/// `krunbox __oci-monitor DIR`: `krunbox run` with the container's settings, from `create`
/// on: the VM boots at once, and the process starts when `start` writes the start FIFO (so
/// `start` costs what is left of the boot, not a boot); returns the process's exit code.
pub fn monitor_main(dir: &Path) -> i32 {
    let log = dir.join(state::MONITOR_LOG);
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        Ok(file) => crate::self_spawn::init_job_logging(std::sync::Mutex::new(file)),
        Err(_) => crate::self_spawn::init_job_logging(std::io::sink),
    }
    // The start FIFO is held open from here on, so a `start` that comes while the root is
    // prepared and the VM boots is kept until the session, at its gate, reads it.
    let fifo = dir.join(state::START_FIFO);
    let _held = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
    {
        Ok(held) => held,
        Err(err) => {
            tracing::error!(%err, fifo = %fifo.display(), "cannot open the start FIFO");
            return 125;
        }
    };
    let record: Record = match std::fs::read(dir.join("container.json"))
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_slice(&text).map_err(|e| e.to_string()))
    {
        Ok(record) => record,
        Err(err) => {
            tracing::error!(%err, "reading the container's record");
            return 125;
        }
    };
    tracing::info!(id = %record.id, args = ?record.run_args, "starting");
    let code = match run_args(&record.run_args) {
        Ok(mut args) => {
            args.started_mark = Some(dir.join(state::RUNNING_FILE));
            args.start_gate = Some(fifo.clone());
            crate::cli::run::run(args).unwrap_or_else(|err| {
                eprintln!("krunbox-oci: {err}");
                125
            })
        }
        Err(err) => {
            eprintln!("krunbox-oci: {err}");
            125
        }
    };
    tracing::info!(code, "the process ended");
    let _ = std::fs::write(dir.join(state::EXIT_FILE), code.to_string());
    code
}

/// `features`: what this runtime supports (the OCI features document).
fn features() -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw"],
        "annotations": {
            "io.krunbox.runtime": "micro-VM",
            bundle::NETWORK_ANNOTATION: "user | none"
        },
    }))
    .unwrap_or_default()
}
