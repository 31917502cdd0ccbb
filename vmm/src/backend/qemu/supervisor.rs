//! The per-VM supervisor: a small `krunbox` process (hidden subcommand) that owns one VM's
//! processes and run directory, so that nothing outlives the VM however `krunbox` ends.
//!
//! ```text
//! krunbox run ──lifeline (stdin)──▶ supervisor ──PDEATHSIG=KILL──▶ vhost-device-vsock
//!             ◀──events (stdout)───            ──PDEATHSIG=KILL──▶ virtiofsd (one per share)
//!                                               ──PDEATHSIG=KILL──▶ qemu-system-x86_64
//! ```
//!
//! - The parent writes the [`LaunchPlan`] as one JSON line on the supervisor's stdin and keeps
//!   the pipe open: that pipe is the lifeline. After the plan it writes [`Request`] lines:
//!   `kill` stops the VM at once, `pause` freezes QEMU (SIGSTOP: no CPU, memory kept, and the
//!   guest's clock, which follows the host's, is right again on resume) and `resume` thaws it,
//!   each answered by an event. End of file —
//!   the parent finished, or died, even by SIGKILL — makes the supervisor stop the VM, stop the
//!   helpers, remove the run directory and exit.
//! - Before starting anything it starts the plan's SSH agent relay (a thread listening where
//!   vhost-device-vsock looks for host port 1025; see [`crate::backend::ssh_agent_relay`]),
//!   which lives as long as the supervisor and so as the VM.
//! - The supervisor reports [`Event`]s as JSON lines on stdout: `ready`, `failed`, `paused`,
//!   `resumed`, `exited`.
//!   After `exited` the run directory stays until the lifeline closes, so the parent can still
//!   read the console log.
//! - It spawns every child from its main thread (the relay's threads spawn none), so the children's
//!   `PR_SET_PDEATHSIG` (which fires when the spawning *thread* exits) fires exactly when the
//!   supervisor dies. If the supervisor itself is SIGKILLed, its children die with it and its
//!   run directory, no longer locked, is removed by the next krunbox start
//!   ([`crate::rundir::collect_stale`]).
//! - It runs in its own process group, so a Ctrl-C on the terminal reaches `krunbox run`
//!   (which forwards it to the guest) and not QEMU.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
#[cfg(target_os = "linux")]
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::plan::{LaunchPlan, Layout, ProcessPlan};
use crate::backend::{self, console, log_tail, Helper, SocketNotReady, VmExit};
use crate::rundir::RunDir;
use crate::self_spawn::emit;

/// How long a helper may take to create its socket.
const HELPER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long QEMU may take to end after a helper did, for QEMU's end to be what is reported.
const HELPER_DEATH_GRACE: Duration = Duration::from_millis(500);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// What the supervisor tells the parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Helpers and QEMU run.
    Ready {
        /// QEMU's pid.
        vmm_pid: u32,
    },
    /// Starting failed; everything started was stopped again.
    Failed {
        /// Which process failed (`vhost-device-vsock`, `qemu`, ...).
        process: String,
        /// What happened, with the tail of its log.
        message: String,
    },
    /// QEMU is frozen (a `pause` request).
    Paused,
    /// QEMU runs again (a `resume` request).
    Resumed,
    /// QEMU ended (the helpers were stopped).
    Exited {
        /// How.
        exit: VmExit,
    },
}

/// What the parent asks for on the lifeline, one line each, after the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Stop QEMU now (SIGKILL).
    Kill,
    /// Freeze QEMU.
    Pause,
    /// Thaw it.
    Resume,
}

impl Request {
    /// The line that carries it.
    pub fn line(self) -> &'static str {
        match self {
            Self::Kill => "kill\n",
            Self::Pause => "pause\n",
            Self::Resume => "resume\n",
        }
    }

    fn parse(line: &[u8]) -> Option<Self> {
        [Self::Kill, Self::Pause, Self::Resume]
            .into_iter()
            .find(|request| request.line().trim_end().as_bytes() == line)
    }
}

/// Runs the supervisor; returns the process exit code.
pub fn main(run_dir: &Path) -> i32 {
    // First: the pipe must not outlive this process's first children.
    let secrets = match crate::self_spawn::take_secrets() {
        Ok(secrets) => secrets,
        Err(message) => {
            emit(&Event::Failed {
                process: "supervisor".into(),
                message,
            });
            return 1;
        }
    };
    let plan = match read_plan() {
        Ok(plan) if plan.run_dir == run_dir => plan,
        Ok(plan) => {
            emit(&Event::Failed {
                process: "supervisor".into(),
                message: format!(
                    "the plan is for {}, not {}",
                    plan.run_dir.display(),
                    run_dir.display()
                ),
            });
            return 1;
        }
        Err(message) => {
            emit(&Event::Failed {
                process: "supervisor".into(),
                message,
            });
            return 1;
        }
    };
    let (root, id) = match (plan.run_dir.parent(), plan.run_dir.file_name()) {
        (Some(root), Some(id)) => (root.to_owned(), id.to_string_lossy().into_owned()),
        _ => {
            emit(&Event::Failed {
                process: "supervisor".into(),
                message: format!("invalid run directory {}", plan.run_dir.display()),
            });
            return 1;
        }
    };
    let run_dir = match RunDir::create(&root, &id) {
        Ok(dir) => dir,
        Err(err) => {
            emit(&Event::Failed {
                process: "supervisor".into(),
                message: err.to_string(),
            });
            return 1;
        }
    };
    init_logging(&run_dir.path().join("supervisor.log"));
    let code = match Supervisor::new() {
        Ok(mut supervisor) => {
            supervisor.run(&plan, secrets);
            0
        }
        Err(err) => {
            emit(&Event::Failed {
                process: "supervisor".into(),
                message: format!("cannot install signal handlers: {err}"),
            });
            // Still wait for the lifeline so the parent can read what it needs.
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            1
        }
    };
    if let Err(err) = run_dir.remove() {
        tracing::warn!(%err, "cannot remove the run directory");
    }
    code
}

fn init_logging(path: &Path) {
    if let Ok(file) = std::fs::File::create(path) {
        crate::self_spawn::init_job_logging(std::sync::Mutex::new(file));
    }
}

/// Reads the first stdin line, byte by byte so nothing after it is consumed.
fn read_plan() -> Result<LaunchPlan, String> {
    let mut line = Vec::new();
    let stdin = std::io::stdin();
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(stdin.as_fd(), &mut byte) {
            Ok(0) => return Err("the parent closed the lifeline before sending a plan".into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(format!("cannot read the plan: {err}")),
        }
    }
    serde_json::from_slice(&line).map_err(|e| format!("invalid plan: {e}"))
}

struct Supervisor {
    wake: UnixStream,
    terminate: Arc<AtomicBool>,
    helpers: Vec<(String, Option<Helper>, Child)>,
    vmm: Option<Child>,
    /// Lifeline bytes after the last complete request line.
    pending: Vec<u8>,
}

impl Supervisor {
    fn new() -> std::io::Result<Self> {
        let (wake, wake_writer) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        // A full pipe must never block a signal handler.
        wake_writer.set_nonblocking(true)?;
        let terminate = Arc::new(AtomicBool::new(false));
        let ending = crate::self_spawn::ENDING_SIGNALS;
        for sig in ending.into_iter().chain([libc::SIGCHLD]) {
            signal_hook::low_level::pipe::register(sig, wake_writer.try_clone()?)?;
        }
        for sig in ending {
            signal_hook::flag::register(sig, terminate.clone())?;
        }
        Ok(Self {
            wake,
            terminate,
            helpers: Vec::new(),
            vmm: None,
            pending: Vec::new(),
        })
    }

    fn run(&mut self, plan: &LaunchPlan, secrets: crate::self_spawn::SecretValues) {
        let started = self.start(plan, secrets);
        match started {
            Ok(pid) => {
                emit(&Event::Ready { vmm_pid: pid });
                self.watch();
            }
            Err((process, message)) => {
                self.stop_all();
                emit(&Event::Failed { process, message });
                self.wait_for_lifeline_end();
            }
        }
        self.stop_all();
    }

    /// Starts the helpers (the gateway with the `secrets`' values, which are then dropped and
    /// wiped), then QEMU.
    fn start(
        &mut self,
        plan: &LaunchPlan,
        secrets: crate::self_spawn::SecretValues,
    ) -> Result<u32, (String, String)> {
        if let Some(relay) = &plan.ssh_agent_relay {
            relay
                .start()
                .map_err(|e| ("supervisor".to_owned(), e.to_string()))?;
        }
        for helper in &plan.helpers {
            let env: &[_] = match helper.role {
                Some(Helper::Network) => &secrets,
                _ => &[],
            };
            let child = spawn(helper, env).map_err(|e| (helper.name.clone(), e))?;
            self.helpers.push((helper.name.clone(), helper.role, child));
            if let Some(socket) = &helper.ready_socket {
                let Some((_, _, child)) = self.helpers.last_mut() else {
                    continue;
                };
                wait_for_socket(child, helper, socket)?;
            }
        }
        let layout = Layout::new(plan.run_dir.clone());
        console::relay(&layout.console_pipe(), &layout.console())
            .map_err(|e| ("supervisor".to_owned(), e.to_string()))?;
        drop(secrets);
        let vmm = spawn(&plan.vmm, &[]).map_err(|e| (plan.vmm.name.clone(), e))?;
        let pid = vmm.id();
        tracing::info!(pid, "qemu started");
        self.vmm = Some(vmm);
        Ok(pid)
    }

    /// Until the lifeline ends: kill requests, signals, QEMU's exit.
    fn watch(&mut self) {
        let mut reported = false;
        loop {
            if !reported {
                if let Some(exit) = self.vmm_exit().or_else(|| self.helper_death()) {
                    tracing::info!(%exit, "the VM ended");
                    self.stop_all();
                    emit(&Event::Exited { exit });
                    reported = true;
                }
            }
            if self.terminate.swap(false, Ordering::Relaxed) {
                tracing::info!("asked to stop by a signal");
                self.signal_vmm(Signal::SIGTERM);
            }
            match self.wait_for_input() {
                Input::LifelineClosed => return,
                Input::Requests(requests) => {
                    for request in requests {
                        self.serve(request, reported);
                    }
                }
            }
        }
    }

    /// Carries out a lifeline request; `ended`: QEMU's end was reported already.
    fn serve(&mut self, request: Request, ended: bool) {
        match request {
            Request::Kill => self.signal_vmm(Signal::SIGKILL),
            // Once QEMU ended there is nothing to freeze; the `exited` event already went out
            // and is the answer.
            Request::Pause if !ended => {
                self.signal_vmm(Signal::SIGSTOP);
                emit(&Event::Paused);
            }
            Request::Resume if !ended => {
                self.signal_vmm(Signal::SIGCONT);
                emit(&Event::Resumed);
            }
            Request::Pause | Request::Resume => {}
        }
    }

    fn wait_for_lifeline_end(&mut self) {
        while !matches!(self.wait_for_input(), Input::LifelineClosed) {}
    }

    fn wait_for_input(&mut self) -> Input {
        let stdin = std::io::stdin();
        let mut fds = [
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(err) => {
                tracing::error!(%err, "poll failed; treating the lifeline as closed");
                return Input::LifelineClosed;
            }
        }
        let stdin_ready = fds[0].revents().is_some_and(|r| {
            r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
        });
        let mut drain = [0u8; 64];
        while matches!((&self.wake).read(&mut drain), Ok(n) if n > 0) {}
        if !stdin_ready {
            return Input::Requests(Vec::new());
        }
        let mut buf = [0u8; 256];
        match nix::unistd::read(stdin.as_fd(), &mut buf) {
            Ok(0) => Input::LifelineClosed,
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                Input::Requests(take_requests(&mut self.pending))
            }
            Err(nix::errno::Errno::EINTR) => Input::Requests(Vec::new()),
            Err(_) => Input::LifelineClosed,
        }
    }

    fn vmm_exit(&mut self) -> Option<VmExit> {
        let vmm = self.vmm.as_mut()?;
        match vmm.try_wait() {
            Ok(Some(status)) => Some(to_exit(status)),
            Ok(None) => None,
            Err(err) => {
                tracing::error!(%err, "cannot wait for qemu");
                None
            }
        }
    }

    /// A helper that died while QEMU runs: the guest lost its files, its agent or its
    /// network, so the VM is stopped and reported ended for that reason.
    fn helper_death(&mut self) -> Option<VmExit> {
        self.vmm.as_ref()?;
        let (name, role) = self.helpers.iter_mut().find_map(|(name, role, child)| {
            match (*role, child.try_wait()) {
                (Some(role), Ok(Some(status))) => Some((format!("{name} ({status})"), role)),
                _ => None,
            }
        })?;
        // QEMU's sockets close before it can be reaped, so a helper that exits because QEMU
        // died can be seen first: QEMU's own end, if it comes at once, is the real story.
        let deadline = Instant::now() + HELPER_DEATH_GRACE;
        while Instant::now() < deadline {
            if let Some(exit) = self.vmm_exit() {
                return Some(exit);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::error!(helper = %name, "a helper died; stopping the VM");
        Some(VmExit::HelperDied(role))
    }

    /// Signals QEMU while it runs (it is our child: until we reap it, its pid is its own).
    fn signal_vmm(&mut self, sig: Signal) {
        if let Some(vmm) = &mut self.vmm {
            if matches!(vmm.try_wait(), Ok(None)) {
                tracing::info!(?sig, "signalling qemu");
                if sig == Signal::SIGTERM {
                    terminate(vmm);
                } else {
                    let _ = signal::kill(pid_of(vmm), sig);
                }
            }
        }
    }

    fn stop_helpers(&mut self) {
        for (name, _, child) in &mut self.helpers {
            stop(name, child);
        }
    }

    fn stop_all(&mut self) {
        if let Some(vmm) = &mut self.vmm {
            stop("qemu", vmm);
        }
        self.stop_helpers();
    }
}

enum Input {
    LifelineClosed,
    /// The complete request lines read (none after a wake-up by a signal).
    Requests(Vec<Request>),
}

/// The complete lines at the start of `pending`, parsed (unknown lines are logged and
/// skipped); a partial last line stays. A line longer than any request is dropped.
fn take_requests(pending: &mut Vec<u8>) -> Vec<Request> {
    let mut requests = Vec::new();
    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        match Request::parse(&line[..end]) {
            Some(request) => requests.push(request),
            None => tracing::warn!(line = %String::from_utf8_lossy(&line), "unknown request"),
        }
    }
    if pending.len() > 64 {
        pending.clear();
    }
    requests
}

/// SIGTERM, and SIGCONT after it: a paused (stopped) process acts on SIGTERM only once
/// continued.
fn terminate(child: &Child) {
    let _ = signal::kill(pid_of(child), Signal::SIGTERM);
    let _ = signal::kill(pid_of(child), Signal::SIGCONT);
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

fn to_exit(status: std::process::ExitStatus) -> VmExit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => VmExit::Exited(code),
        (None, Some(sig)) => VmExit::Killed(sig),
        (None, None) => VmExit::Exited(-1),
    }
}

/// SIGTERM, a grace period, SIGKILL; always reaps.
fn stop(name: &str, child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    terminate(child);
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::warn!(name, "did not stop on SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts one process of the plan, with `secrets` (name, value) in its environment.
fn spawn(
    plan: &ProcessPlan,
    secrets: &[(String, zeroize::Zeroizing<String>)],
) -> Result<Child, String> {
    let log = std::fs::File::create(&plan.log)
        .map_err(|e| format!("cannot create {}: {e}", plan.log.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", plan.log.display()))?;
    let mut cmd = Command::new(&plan.program);
    cmd.args(&plan.args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .env_remove(crate::self_spawn::SECRETS_FD_ENV)
        .envs(secrets.iter().map(|(name, value)| (name, value.as_str())));
    die_with_supervisor(&mut cmd);
    // Not `?cmd`: its Debug shows the environment it was given (the secrets' values).
    tracing::info!(name = %plan.name, program = %plan.program.display(), args = ?plan.args, "starting");
    cmd.spawn()
        .map_err(|e| format!("cannot run {}: {e}", plan.program.display()))
}

/// The child gets SIGKILL when the supervisor dies, even by SIGKILL.
#[cfg(target_os = "linux")]
fn die_with_supervisor(cmd: &mut Command) {
    // SAFETY: between fork and exec the closure only calls prctl(2), which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// No parent-death signal outside Linux: the lifeline still stops everything when krunbox
/// dies; only a SIGKILL of the supervisor itself would leave its children running.
#[cfg(not(target_os = "linux"))]
fn die_with_supervisor(_cmd: &mut Command) {}

fn wait_for_socket(
    child: &mut Child,
    plan: &ProcessPlan,
    socket: &Path,
) -> Result<(), (String, String)> {
    let problem = match backend::wait_for_socket(child, socket, HELPER_READY_TIMEOUT) {
        Ok(()) => return Ok(()),
        Err(SocketNotReady::Exited(status)) => {
            format!("exited with {status} before creating {}", socket.display())
        }
        Err(SocketNotReady::TimedOut) => format!(
            "did not create {} within {HELPER_READY_TIMEOUT:?}",
            socket.display()
        ),
    };
    Err((
        plan.name.clone(),
        format!("{problem}; its log:\n{}", log_tail(&plan.log, 20)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_line_each() {
        let line = serde_json::to_string(&Event::Exited {
            exit: VmExit::Exited(0),
        })
        .unwrap();
        assert_eq!(line, r#"{"event":"exited","exit":{"Exited":0}}"#);
        let back: Event = serde_json::from_str(r#"{"event":"ready","vmm_pid":42}"#).unwrap();
        assert_eq!(back, Event::Ready { vmm_pid: 42 });
        assert_eq!(
            serde_json::to_string(&Event::Paused).unwrap(),
            r#"{"event":"paused"}"#
        );
    }

    #[test]
    fn requests_are_whole_lines_and_a_partial_one_waits_for_its_end() {
        let mut pending = b"pause\nbogus\nresume\nki".to_vec();
        assert_eq!(
            take_requests(&mut pending),
            [Request::Pause, Request::Resume]
        );
        assert_eq!(pending, b"ki");
        pending.extend_from_slice(b"ll\n");
        assert_eq!(take_requests(&mut pending), [Request::Kill]);
        assert!(pending.is_empty());
        // "kill" inside another line is not a request.
        pending.extend_from_slice(b"skill\n");
        assert!(take_requests(&mut pending).is_empty());
        pending.extend_from_slice(&[b'x'; 100]);
        assert!(take_requests(&mut pending).is_empty());
        assert!(pending.is_empty(), "an overlong partial line is dropped");
    }
}
