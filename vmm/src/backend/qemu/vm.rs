//! The parent's side of one QEMU VM: starts its supervisor and talks to it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use krunbox_protocol::transport::AgentAddress;

use super::plan::{LaunchPlan, Layout};
use super::supervisor::{Event, Request};
use crate::backend::console::LineWatch;
use crate::backend::{log_tail, BackendError, VmExit, VmHandle};
use crate::io_error::io;
use crate::self_spawn::{self, Job};

/// How long the supervisor may take to start the helpers and QEMU.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the supervisor may take to answer a pause or resume request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the supervisor may take to clean up after the lifeline closes.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// A VM run by a supervisor process.
pub struct QemuVm {
    supervisor: Child,
    lifeline: Option<ChildStdin>,
    events: mpsc::Receiver<Event>,
    exit: Option<VmExit>,
    /// The guest's "agent listening" line on the console.
    agent_listening: LineWatch,
    layout: Layout,
}

impl QemuVm {
    /// Starts the supervisor with `plan` and waits until QEMU runs.
    pub fn launch(
        plan: &LaunchPlan,
        layout: Layout,
        secrets: &crate::self_spawn::SecretValues,
    ) -> Result<Self, BackendError> {
        let (exe, mut command) = self_spawn::command(Job::QEMU_SUPERVISOR)
            .map_err(io("find", std::path::Path::new("the krunbox executable")))?;
        let pipe = self_spawn::hand_secrets(&mut command, secrets).map_err(io(
            "hand the secrets to",
            std::path::Path::new("the VM supervisor"),
        ))?;
        let mut child = command
            .arg(layout.dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: terminal signals (Ctrl-C) go to krunbox run, not QEMU.
            .process_group(0)
            .spawn()
            .map_err(|e| BackendError::Helper {
                name: "the VM supervisor".into(),
                detail: format!("cannot run {}: {e}", exe.display()),
            })?;
        drop(pipe);
        let events = match child.stdout.take() {
            Some(stdout) => self_spawn::read_events(stdout, "vm-supervisor-events")
                .map_err(|e| BackendError::Supervisor(format!("cannot start a thread: {e}")))?,
            None => mpsc::channel().1,
        };
        let mut vm = Self {
            lifeline: child.stdin.take(),
            supervisor: child,
            events,
            exit: None,
            agent_listening: LineWatch::new(layout.console(), krunbox_protocol::AGENT_READY_LINE),
            layout,
        };
        let plan_line = serde_json::to_string(plan)
            .map_err(|e| BackendError::Supervisor(format!("cannot encode the plan: {e}")))?;
        vm.send(&format!("{plan_line}\n"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match vm.events.recv_timeout(left) {
                Ok(Event::Ready { vmm_pid }) => {
                    tracing::debug!(vmm_pid, dir = %vm.layout.dir().display(), "VM started");
                    return Ok(vm);
                }
                Ok(Event::Failed { process, message }) => {
                    return Err(BackendError::Helper {
                        name: process,
                        detail: message,
                    })
                }
                Ok(Event::Exited { exit }) => vm.exit = Some(exit),
                Ok(Event::Paused | Event::Resumed) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(BackendError::Supervisor(format!(
                        "the VM did not start within {START_TIMEOUT:?}"
                    )))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(BackendError::Supervisor(format!(
                        "the supervisor exited while starting the VM ({})",
                        vm.supervisor
                            .try_wait()
                            .ok()
                            .flatten()
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "still running".into())
                    )))
                }
            }
        }
    }

    /// Sends `request` and waits for the event that answers it; a VM that ended meanwhile
    /// is not an error (there is nothing left to pause or resume).
    fn request(
        &mut self,
        request: Request,
        answered: impl Fn(&Event) -> bool,
    ) -> Result<(), BackendError> {
        if self.exit.is_some() {
            return Ok(());
        }
        self.send(request.line())?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if answered(&event) => return Ok(()),
                Ok(Event::Exited { exit }) => {
                    self.exit = Some(exit);
                    return Ok(());
                }
                Ok(other) => tracing::debug!(?other, "late supervisor event"),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(BackendError::Supervisor(format!(
                        "no answer to {request:?} within {REQUEST_TIMEOUT:?}"
                    )))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(BackendError::Supervisor(
                        "the supervisor exited without an answer".into(),
                    ))
                }
            }
        }
    }

    fn send(&mut self, text: &str) -> Result<(), BackendError> {
        let lifeline = self
            .lifeline
            .as_mut()
            .ok_or_else(|| BackendError::Supervisor("the lifeline is closed".into()))?;
        lifeline
            .write_all(text.as_bytes())
            .and_then(|()| lifeline.flush())
            .map_err(|e| BackendError::Supervisor(format!("cannot reach the supervisor: {e}")))
    }
}

impl VmHandle for QemuVm {
    fn agent_address(&self) -> AgentAddress {
        AgentAddress::HybridVsock {
            uds: self.layout.agent_uds(),
            port: krunbox_protocol::AGENT_VSOCK_PORT,
        }
    }

    fn console_log(&self) -> PathBuf {
        self.layout.console()
    }

    fn agent_connectable(&mut self) -> bool {
        self.agent_listening.seen()
    }

    fn diagnostics(&self) -> String {
        let qemu = log_tail(&self.layout.log("qemu"), 10);
        if qemu.trim().is_empty() {
            String::new()
        } else {
            format!("qemu said:\n{qemu}")
        }
    }

    fn try_wait(&mut self) -> Result<Option<VmExit>, BackendError> {
        if self.exit.is_some() {
            return Ok(self.exit);
        }
        loop {
            match self.events.try_recv() {
                Ok(Event::Exited { exit }) => {
                    self.exit = Some(exit);
                    return Ok(self.exit);
                }
                Ok(other) => tracing::debug!(?other, "late supervisor event"),
                Err(mpsc::TryRecvError::Empty) => return Ok(None),
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(BackendError::Supervisor(
                        "the supervisor exited without reporting how the VM ended".into(),
                    ))
                }
            }
        }
    }

    fn kill(&mut self) -> Result<(), BackendError> {
        if self.exit.is_some() {
            return Ok(());
        }
        self.send(Request::Kill.line())
    }

    fn pause(&mut self) -> Result<(), BackendError> {
        self.request(Request::Pause, |e| matches!(e, Event::Paused))
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        self.request(Request::Resume, |e| matches!(e, Event::Resumed))
    }
}

impl Drop for QemuVm {
    /// Closes the lifeline: the supervisor stops whatever still runs and removes the run
    /// directory. Waits for that, bounded; a stuck supervisor is killed (its children die
    /// with it) and its directory collected.
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        loop {
            match self.supervisor.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        tracing::warn!("the VM supervisor did not exit; killing it");
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
        if let Some(root) = self.layout.dir().parent() {
            if let Err(err) = crate::rundir::collect_stale(root) {
                tracing::warn!(%err, "cannot collect the killed supervisor's run directory");
            }
        }
    }
}
