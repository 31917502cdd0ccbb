//! krunbox starting a copy of itself for one job: the internal subcommands (one enum, whose
//! names are the constants every spawner uses), the command that starts one, and the JSON
//! event lines a job reports on its stdout to the process that started it, and how a job
//! learns it must end: one of [`ENDING_SIGNALS`], or its lifeline (stdin, a pipe whose write
//! end only its starter holds) reaching its end because the starter is gone.
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

/// The signals that end any of krunbox's own long-lived processes (each cleans up first).
pub const ENDING_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks until `lifeline` reaches its end (or fails): the starter closed it, or died.
/// Whatever is read before is thrown away.
pub fn wait_for_lifeline_end(mut lifeline: impl std::io::Read) {
    let mut buf = [0u8; 256];
    loop {
        match lifeline.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Resolves when stdin, the lifeline, reaches its end (or fails).
pub async fn lifeline_end() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while matches!(tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await, Ok(n) if n > 0) {}
}

/// Resolves at the first of [`ENDING_SIGNALS`] (never, if they cannot be watched). One that
/// this process was started ignoring stays ignored: `nohup krunbox serve` outlives the
/// terminal, as the one who started it asked.
pub async fn ending_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut watched = Vec::new();
    for number in ENDING_SIGNALS.into_iter().filter(|&s| !is_ignored(s)) {
        match signal(SignalKind::from_raw(number)) {
            Ok(stream) => watched.push(stream),
            Err(err) => tracing::warn!(%err, signal = number, "cannot handle a signal"),
        }
    }
    if watched.is_empty() {
        return std::future::pending().await;
    }
    let arrivals = watched.iter_mut().map(|stream| Box::pin(stream.recv()));
    futures_util::future::select_all(arrivals).await;
}

/// Whether `signal` is ignored in this process (as `nohup` leaves SIGHUP, across `exec`).
fn is_ignored(signal: i32) -> bool {
    let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: with a null new action, sigaction(2) only writes the current one into
    // `current`, which is valid (zeroed) memory of the right type for the call.
    let rc = unsafe { libc::sigaction(signal, std::ptr::null(), current.as_mut_ptr()) };
    // SAFETY: zeroed is a valid `sigaction` (plain data), and on success the call filled it.
    let current = unsafe { current.assume_init() };
    rc == 0 && current.sa_sigaction == libc::SIG_IGN
}

/// The variable naming the inherited pipe a VM's supervisor (QEMU) or VMM child (libkrun)
/// reads the secrets' values from, to give them to the gateway alone.
pub const SECRETS_FD_ENV: &str = "KRUNBOX_SECRETS_FD";

/// The values of a network's secrets, wiped from memory when dropped.
pub type SecretValues = Vec<(String, zeroize::Zeroizing<String>)>;

/// Hands `values` (name, value) to the job `command` starts through a pipe, and keeps the
/// variables out of its environment: the VMM (the process a guest that escaped would be in)
/// never has them in its environment, only in memory until it has started the gateway. The
/// returned read end is the parent's copy, to drop once the job is spawned.
pub fn hand_secrets(
    command: &mut Command,
    values: &SecretValues,
) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if values.is_empty() {
        return Ok(None);
    }
    let map: std::collections::BTreeMap<&str, &str> = values
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let text = zeroize::Zeroizing::new(serde_json::to_vec(&map)?);
    // A pipe's buffer holds at least 4 KiB everywhere (64 KiB on Linux): beyond, the write
    // would wait for a reader that has not started.
    if text.len() > 4096 {
        return Err(std::io::Error::other(
            "the secrets' values are over 4 KiB together",
        ));
    }
    let (read, write) = nix::unistd::pipe()?;
    let mut write = std::fs::File::from(write);
    write.write_all(&text)?;
    drop(write);
    let fd = read.as_raw_fd();
    for (name, _) in values {
        command.env_remove(name);
    }
    command.env(SECRETS_FD_ENV, fd.to_string());
    // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe; it clears
    // close-on-exec on the child's copy of the read end so the job inherits it.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(Some(read))
}

/// Reads the values [`hand_secrets`] sent this job, if any, and closes the pipe (so no child
/// of this job inherits it).
pub fn take_secrets() -> Result<SecretValues, String> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let Some(fd) = std::env::var(SECRETS_FD_ENV)
        .ok()
        .and_then(|fd| fd.parse::<i32>().ok())
    else {
        return Ok(Vec::new());
    };
    if fd < 3 {
        return Err(format!("{SECRETS_FD_ENV}={fd} is not a pipe of ours"));
    }
    // SAFETY: the parent put this descriptor here for this process alone (`hand_secrets`),
    // and nothing else in this process owns it; the File closes it.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut text = zeroize::Zeroizing::new(Vec::new());
    pipe.read_to_end(&mut text)
        .map_err(|e| format!("reading the secrets' values: {e}"))?;
    drop(pipe);
    let map: std::collections::BTreeMap<String, String> = serde_json::from_slice(&text)
        .map_err(|e| format!("the secrets' values are malformed: {e}"))?;
    Ok(map
        .into_iter()
        .map(|(name, value)| (name, zeroize::Zeroizing::new(value)))
        .collect())
}
