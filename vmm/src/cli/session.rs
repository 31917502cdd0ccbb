//! One command in a guest with the host's terminal attached: what `krunbox run` and
//! `krunbox exec` share.
//!
//! A [`Session`] waits for the agent (racing the VM's end and the user's signals), starts the
//! command, copies its stdout/stderr to ours and our stdin to its, forwards signals (without
//! a PTY) or window resizes (with one), and returns the command's exit code. The VM is seen
//! only through a [`VmHandle`]: a VM this process started (`run`) or a running sandbox it
//! attached to (`exec`).

use std::io::IsTerminal;
use std::time::Duration;

use krunbox_protocol::client::{Client, ExecSpec, ExecStdin};
use krunbox_protocol::messages::{ExitStatus, Outcome, Rlimit};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::terminal;
use crate::backend::agent_wait::{console_tail, vm_ended, wait_for_agent, AgentWaitError};
use crate::backend::VmHandle;

/// How long the guest may take to power off after the command's exit status arrived.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session failed (krunbox's failure, not the command's).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No agent answered.
    #[error(transparent)]
    Boot(#[from] AgentWaitError),
    /// The VM ended while the command ran.
    #[error("the VM stopped while the command ran ({exit}); last console lines:\n{console}")]
    VmEnded {
        /// How it ended.
        exit: String,
        /// The console tail (and the VMM's own messages).
        console: String,
    },
    /// The connection to the agent failed.
    #[error("lost the guest agent: {0}")]
    Agent(#[from] krunbox_protocol::client::ClientError),
    /// Local I/O.
    #[error("{0}")]
    Io(String),
}

/// What a second Ctrl-C (without `-t`) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondInterrupt {
    /// Stop the VM at once (`krunbox run`: the VM is ours).
    StopVm,
    /// Leave the command and the VM alone and return (`krunbox exec`: the sandbox goes on).
    Detach,
}

/// The command and how to attach to it.
#[derive(Debug, Clone)]
pub struct CommandOptions {
    /// argv.
    pub command: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory in the guest.
    pub workdir: Option<String>,
    /// Run as this uid and gid (default: the agent's, root).
    pub user: Option<(u32, u32)>,
    /// Supplementary groups (empty: none but the primary one, for another user).
    pub groups: Vec<u32>,
    /// Some of them were asked for (`--group-add`), not only the user's memberships in the
    /// image: an agent that cannot set groups is then refused rather than skipped.
    pub groups_asked: bool,
    /// On a pseudo-terminal.
    pub tty: bool,
    /// Forward stdin even when it is a terminal (`-i`).
    pub interactive: bool,
    /// The guest powers off when the command ends.
    pub power_off_on_exit: bool,
    /// The command is the guest's last (`run`, cold or pooled): what it leaves running is
    /// killed when it exits.
    pub last_command: bool,
    /// What a second Ctrl-C does.
    pub second_interrupt: SecondInterrupt,
    /// How long to wait for the agent.
    pub agent_timeout: Duration,
    /// A file to create once the command runs (`krunbox-oci`: its `start` waits for it).
    pub started_mark: Option<std::path::PathBuf>,
    /// A FIFO whose one byte the command waits for once the agent answers (`krunbox-oci`).
    pub start_gate: Option<std::path::PathBuf>,
    /// Where a signal that came before the session's handlers was noted (its number; 0:
    /// none), by `run` while the VM started.
    pub early_signal: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    /// Resource limits (`--ulimit`).
    pub rlimits: Vec<Rlimit>,
    /// Capabilities and `no_new_privs` (`--cap-add`, `--cap-drop`, `--security-opt`).
    pub privileges: super::privileges::Privileges,
}

/// A command's resource limits on the command line (`run`, `exec`).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Set a resource limit of COMMAND, as `docker run --ulimit` does: NAME=SOFT[:HARD]
    /// (nofile, nproc, core, stack, memlock, ...; a value is a number, `unlimited` or -1).
    /// Set before COMMAND becomes its user, so a hard limit may be raised. Repeatable.
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]", value_parser = parse_ulimit)]
    pub ulimits: Vec<Rlimit>,
}

/// `--ulimit NAME=SOFT[:HARD]`, as `docker run` takes it.
fn parse_ulimit(text: &str) -> Result<Rlimit, String> {
    krunbox_protocol::rlimit::parse_ulimit(text).map_err(|e| e.to_string())
}

/// Whether the agent sets supplementary groups (an older one, in a sandbox or pool member it
/// booted, does not).
pub fn serves_groups(agent: &krunbox_protocol::messages::HelloAck) -> bool {
    agent
        .features
        .iter()
        .any(|f| f == krunbox_protocol::messages::GROUPS_FEATURE)
}

/// `path`, a FIFO, opened for reading without blocking; read-write, so that it never reads as
/// ended before its writer comes.
fn open_gate(path: &std::path::Path) -> Result<tokio::net::unix::pipe::Receiver, SessionError> {
    use std::os::unix::fs::OpenOptionsExt;
    let gate = |e: std::io::Error| SessionError::Io(format!("{}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(gate)?;
    tokio::net::unix::pipe::Receiver::from_file(file).map_err(gate)
}

/// The guest's boot clock as its agent reported it in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestClock {
    /// When guest-init started (ms on the guest's boot clock; 0: not reported).
    pub init_started_ms: u64,
    /// When the agent answered (likewise).
    pub uptime_ms: u64,
}

/// When a session's steps happened (`krunbox run --timings`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionMarks {
    /// The agent's handshake arrived.
    pub agent: Option<std::time::Instant>,
    /// What the handshake said of the guest's clock.
    pub guest_clock: Option<GuestClock>,
    /// The command runs.
    pub exec_started: Option<std::time::Instant>,
    /// Its exit status arrived.
    pub exited: Option<std::time::Instant>,
}

/// SIGUSR1 in the guest (Linux).
const LINUX_SIGUSR1: i32 = 10;
/// SIGUSR2 in the guest (Linux).
const LINUX_SIGUSR2: i32 = 12;

/// The signals krunbox forwards.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    quit: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    fn install() -> Result<Self, SessionError> {
        let on = |kind: SignalKind| {
            signal(kind).map_err(|e| SessionError::Io(format!("cannot handle signals: {e}")))
        };
        Ok(Self {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
            quit: on(SignalKind::quit())?,
            usr1: on(SignalKind::user_defined1())?,
            usr2: on(SignalKind::user_defined2())?,
        })
    }

    /// The next forwarded signal (Linux numbering).
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
            _ = self.quit.recv() => libc::SIGQUIT,
            // USR1 and USR2 are numbered differently on macOS: the guest's (Linux's) numbers.
            _ = self.usr1.recv() => LINUX_SIGUSR1,
            _ = self.usr2.recv() => LINUX_SIGUSR2,
        }
    }
}

/// One command in one VM.
pub struct Session<'a> {
    options: CommandOptions,
    forward_stdin: bool,
    vm: &'a mut dyn VmHandle,
    marks: SessionMarks,
}

impl<'a> Session<'a> {
    /// A session for `options` in `vm`.
    pub fn new(options: CommandOptions, vm: &'a mut dyn VmHandle) -> Self {
        let forward_stdin = options.interactive || !std::io::stdin().is_terminal();
        Self {
            options,
            forward_stdin,
            vm,
            marks: SessionMarks::default(),
        }
    }

    /// Waits for the agent, runs the command; returns krunbox's exit code.
    pub async fn run(self) -> Result<i32, SessionError> {
        self.run_marked().await.0
    }

    /// [`Self::run`], and when its steps happened.
    pub async fn run_marked(mut self) -> (Result<i32, SessionError>, SessionMarks) {
        let result = self.run_inner().await;
        (result, self.marks)
    }

    async fn run_inner(&mut self) -> Result<i32, SessionError> {
        let mut signals = Signals::install()?;
        let early = self.options.early_signal.as_ref();
        let early = early.map_or(0, |s| s.load(std::sync::atomic::Ordering::SeqCst));
        if early != 0 {
            eprintln!("krunbox: interrupted while the VM was booting; stopping it");
            let _ = self.vm.kill();
            return Ok(128 + early as i32);
        }
        // Opened first, so that a start written while the VM boots is kept until it is read.
        let gate = self
            .options
            .start_gate
            .as_deref()
            .map(open_gate)
            .transpose()?;
        let timeout = self.options.agent_timeout;
        let client = match wait_for_agent(self.vm, timeout, signals.next()).await {
            Ok(client) => client,
            Err(AgentWaitError::Interrupted { signal }) => {
                if self.options.second_interrupt == SecondInterrupt::StopVm {
                    eprintln!("krunbox: interrupted while the VM was booting; stopping it");
                    let _ = self.vm.kill();
                }
                return Ok(128 + signal);
            }
            Err(err) => return Err(err.into()),
        };
        self.marks.agent = Some(std::time::Instant::now());
        let hello = client.agent_info();
        self.marks.guest_clock = Some(GuestClock {
            init_started_ms: hello.init_started_ms,
            uptime_ms: hello.uptime_ms,
        });
        tracing::debug!(agent = ?hello, "agent up");
        if let Some(gate) = gate {
            if let Some(code) = self.wait_for_start(gate, &mut signals).await? {
                return Ok(code);
            }
        }
        let status = self.exec(&client, &mut signals).await?;
        if self.options.power_off_on_exit {
            // The guest powers off on its own now; give it a moment so writes are flushed.
            let _ = tokio::time::timeout(POWER_OFF_TIMEOUT, vm_ended(self.vm)).await;
        }
        Ok(status)
    }

    /// Waits for the gate's byte; `Some(code)` when a signal or the VM's end came first (the
    /// VM is stopped then, as when a boot is interrupted).
    async fn wait_for_start(
        &mut self,
        mut gate: tokio::net::unix::pipe::Receiver,
        signals: &mut Signals,
    ) -> Result<Option<i32>, SessionError> {
        use tokio::io::AsyncReadExt;
        tracing::info!("the guest's agent answered; waiting for start");
        let mut byte = [0u8; 1];
        tokio::select! {
            read = gate.read(&mut byte) => match read {
                Ok(1) => Ok(None),
                Ok(_) => Err(SessionError::Io("the start gate closed unwritten".into())),
                Err(err) => Err(SessionError::Io(format!("the start gate: {err}"))),
            },
            signal = signals.next() => {
                tracing::info!(signal, "signalled before start; stopping the VM");
                let _ = self.vm.kill();
                Ok(Some(128 + signal))
            }
            exit = vm_ended(self.vm) => Err(SessionError::VmEnded {
                exit,
                console: console_tail(self.vm),
            }),
        }
    }

    fn spec(&self, agent: &krunbox_protocol::messages::HelloAck) -> ExecSpec {
        let options = &self.options;
        let mut spec =
            ExecSpec::new(options.command.clone()).power_off_on_exit(options.power_off_on_exit);
        spec = spec.kill_leftovers_on_exit(options.last_command);
        for (key, value) in &options.env {
            spec = spec.env(key, value);
        }
        if let Some(dir) = &options.workdir {
            spec = spec.cwd(dir);
        }
        if let Some((uid, gid)) = options.user {
            spec = spec.user(uid, gid);
        }
        if !options.groups.is_empty() {
            if options.groups_asked || serves_groups(agent) {
                spec = spec.groups(options.groups.iter().copied());
            } else {
                tracing::debug!("the agent predates supplementary groups; the user's left out");
            }
        }
        for limit in &options.rlimits {
            spec = spec.rlimit(*limit);
        }
        spec = options.privileges.apply(spec);
        if options.tty {
            let (rows, cols) = terminal::window_size().unwrap_or((24, 80));
            spec = spec.pty(rows, cols);
            let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
            spec = spec.term(term);
        } else {
            spec = spec.stdin(self.forward_stdin);
        }
        spec
    }

    async fn exec(&mut self, client: &Client, signals: &mut Signals) -> Result<i32, SessionError> {
        let tty = self.options.tty;
        let mut execution = client.exec(self.spec(client.agent_info())).await?;
        self.marks.exec_started = Some(std::time::Instant::now());
        if let Some(mark) = &self.options.started_mark {
            if let Err(err) = std::fs::write(mark, b"") {
                tracing::warn!(%err, mark = %mark.display(), "cannot mark the command as started");
            }
        }
        let control = execution.control();
        let stdin = execution.take_stdin();
        let (_, mut stdout, mut stderr, exit) = execution.split();
        let raw_mode = if tty && self.forward_stdin && std::io::stdin().is_terminal() {
            terminal::RawMode::enable()
                .map_err(|e| tracing::warn!(%e, "cannot put the terminal in raw mode"))
                .ok()
        } else {
            None
        };
        let stdin_task = stdin.map(|stdin| {
            let forward = self.forward_stdin;
            tokio::spawn(forward_stdin(stdin, forward))
        });
        let stdout_task = tokio::spawn(async move {
            let mut out = tokio::io::stdout();
            while let Some(chunk) = stdout.recv().await {
                if out.write_all(&chunk).await.is_err() || out.flush().await.is_err() {
                    break;
                }
            }
        });
        let stderr_task = tokio::spawn(async move {
            let mut err = tokio::io::stderr();
            while let Some(chunk) = stderr.recv().await {
                if err.write_all(&chunk).await.is_err() || err.flush().await.is_err() {
                    break;
                }
            }
        });

        let mut winch = signal(SignalKind::window_change())
            .map_err(|e| SessionError::Io(format!("cannot handle SIGWINCH: {e}")))?;
        tokio::pin!(exit);
        let mut interrupts = 0u32;
        let outcome = loop {
            tokio::select! {
                biased;
                status = &mut exit => {
                    self.marks.exited = Some(std::time::Instant::now());
                    break Ok(status);
                }
                sig = signals.next() => {
                    if sig == libc::SIGINT && !tty {
                        interrupts += 1;
                        if interrupts >= 2 {
                            match self.options.second_interrupt {
                                SecondInterrupt::StopVm => {
                                    eprintln!("krunbox: second interrupt; stopping the VM");
                                    let _ = self.vm.kill();
                                }
                                SecondInterrupt::Detach => {
                                    eprintln!("krunbox: second interrupt; leaving the command");
                                }
                            }
                            break Err(128 + libc::SIGINT);
                        }
                    }
                    tracing::debug!(sig, "forwarding a signal to the guest command");
                    if let Err(err) = control.signal(sig).await {
                        tracing::warn!(%err, "cannot forward the signal");
                    }
                }
                _ = winch.recv(), if tty => {
                    if let Some((rows, cols)) = terminal::window_size() {
                        let _ = control.resize(rows, cols).await;
                    }
                }
                exit = vm_ended(self.vm) => {
                    drop(raw_mode);
                    return Err(SessionError::VmEnded {
                        exit,
                        console: console_tail(self.vm),
                    });
                }
            }
        };
        let status = match outcome {
            Ok(status) => status,
            Err(code) => {
                drop(raw_mode);
                return Ok(code);
            }
        };
        // All output precedes the exit status; let the writers finish.
        let _ = stdout_task.await;
        let _ = stderr_task.await;
        if let Some(task) = stdin_task {
            task.abort();
        }
        drop(raw_mode);
        match status {
            Ok(status) => Ok(report(&status, &self.options.command)),
            Err(err) => Err(SessionError::VmEnded {
                exit: err.to_string(),
                console: console_tail(self.vm),
            }),
        }
    }
}

/// Copies krunbox's stdin to the command's; closes it at end of file. When stdin is not
/// forwarded (a terminal without -i), keeps the command's stdin open but silent.
async fn forward_stdin(mut stdin: ExecStdin, forward: bool) {
    if !forward {
        std::future::pending::<()>().await;
    }
    match stdin.send_from(tokio::io::stdin()).await {
        Ok(_) => {
            let _ = stdin.close().await;
        }
        Err(err) => tracing::debug!(%err, "stdin forwarding stopped"),
    }
}

/// The exit code for `status`, explaining start failures on stderr.
fn report(status: &ExitStatus, command: &[String]) -> i32 {
    if let Some(Outcome::SpawnFailed(failure)) = &status.outcome {
        eprintln!(
            "krunbox: cannot run {:?} in the guest: {}",
            command.first().map(String::as_str).unwrap_or_default(),
            failure.message
        );
    }
    if status.timed_out {
        eprintln!("krunbox: the command timed out");
    }
    status.shell_code()
}

/// Runs `future` on a small multi-threaded runtime (stdin, stdout and the agent connection
/// progress independently); output tasks still holding stdout are given a moment.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, SessionError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| SessionError::Io(format!("cannot start the async runtime: {e}")))?;
    let output = runtime.block_on(future);
    runtime.shutdown_timeout(Duration::from_millis(200));
    Ok(output)
}
