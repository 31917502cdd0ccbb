//! The parent's side of one libkrun VM: the run directory (created and locked here), the VMM
//! child (see [`super::child`]) and what the session asks of a [`VmHandle`].

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use krunbox_protocol::transport::AgentAddress;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::child::Event;
use super::config::{KrunVmConfig, Layout};
use crate::backend::{log_tail, BackendError, VmExit, VmHandle};
use crate::io_error::io;
use crate::rundir::{RunDir, RunDirError};
use crate::self_spawn::{self, Job};

/// How long the child may take to configure libkrun.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the child may take to exit after its lifeline closes.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// VMM log lines in error reports.
const VMM_LOG_LINES: usize = 15;

/// A VM run by a `krunbox __krun-vmm` child.
pub struct KrunVm {
    child: Child,
    lifeline: Option<ChildStdin>,
    events: mpsc::Receiver<Event>,
    failure: Option<String>,
    exit: Option<VmExit>,
    layout: Layout,
    run_dir: Option<RunDir>,
}

impl KrunVm {
    /// Writes `config` into `run_dir`, starts the child and waits until it enters the VM (or,
    /// for a `dry_run`, until it configured libkrun without entering).
    pub fn launch(
        config: &KrunVmConfig,
        run_dir: RunDir,
        dry_run: bool,
        secrets: &crate::self_spawn::SecretValues,
    ) -> Result<Self, BackendError> {
        let layout = Layout::new(run_dir.path().to_owned());
        let (mut process, events) = match spawn_child(config, &layout, dry_run, secrets) {
            Ok(started) => started,
            Err(err) => {
                if let Err(cleanup) = run_dir.remove() {
                    tracing::warn!(%cleanup, "cannot remove the run directory");
                }
                return Err(err);
            }
        };
        // From here on, dropping `vm` stops the child and removes the run directory.
        let mut vm = Self {
            lifeline: process.stdin.take(),
            child: process,
            events,
            failure: None,
            exit: None,
            layout,
            run_dir: Some(run_dir),
        };
        vm.wait_until_entered(dry_run)?;
        Ok(vm)
    }

    fn wait_until_entered(&mut self, dry_run: bool) -> Result<(), BackendError> {
        match self.events.recv_timeout(START_TIMEOUT) {
            Ok(Event::Entering) => {
                tracing::debug!(dir = %self.layout.dir().display(), "libkrun VM entered");
                Ok(())
            }
            Ok(Event::Configured) if dry_run => {
                tracing::warn!("dry run: libkrun is configured but the VM is never entered");
                Ok(())
            }
            Ok(Event::Configured) => Err(BackendError::Supervisor(
                "the libkrun VMM was started without entering the VM".into(),
            )),
            Ok(Event::Failed { message }) => Err(BackendError::Helper {
                name: "libkrun".into(),
                detail: self.with_vmm_log(message),
            }),
            Ok(Event::HelperDied { helper }) => Err(BackendError::Helper {
                name: "libkrun".into(),
                detail: self.with_vmm_log(format!("{helper} died while the VM started")),
            }),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(BackendError::Supervisor(self.with_vmm_log(format!(
                    "the libkrun VMM did not configure the VM within {START_TIMEOUT:?}"
                ))))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self
                    .child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| format!("unknown status: {e}"));
                Err(BackendError::Supervisor(self.with_vmm_log(format!(
                    "the libkrun VMM exited while starting the VM ({status})"
                ))))
            }
        }
    }

    fn vmm_log_tail(&self) -> String {
        log_tail(&self.layout.log("vmm"), VMM_LOG_LINES)
    }

    fn with_vmm_log(&self, message: String) -> String {
        let tail = self.vmm_log_tail();
        if tail.trim().is_empty() {
            message
        } else {
            format!(
                "{message}\nthe VMM log ({}):\n{tail}",
                self.layout.log("vmm").display()
            )
        }
    }

    /// Takes the child's events; returns the helper whose death ended the VM, if one did.
    fn drain_events(&mut self) -> Option<crate::backend::Helper> {
        let mut died = None;
        while let Ok(event) = self.events.try_recv() {
            match event {
                Event::Failed { message } => self.failure = Some(message),
                Event::HelperDied { helper } => died = Some(helper),
                Event::Configured | Event::Entering => {}
            }
        }
        died
    }
}

impl VmHandle for KrunVm {
    fn agent_address(&self) -> AgentAddress {
        AgentAddress::Unix(self.layout.agent_socket())
    }

    fn console_log(&self) -> PathBuf {
        self.layout.console()
    }

    fn diagnostics(&self) -> String {
        let mut text = String::new();
        if let Some(failure) = &self.failure {
            text.push_str(&format!("libkrun: {failure}\n"));
        }
        let tail = self.vmm_log_tail();
        if !tail.trim().is_empty() {
            text.push_str(&format!("the VMM said:\n{tail}"));
        }
        text
    }

    fn try_wait(&mut self) -> Result<Option<VmExit>, BackendError> {
        if self.exit.is_none() {
            let status = self
                .child
                .try_wait()
                .map_err(|e| BackendError::Supervisor(format!("cannot wait for the VMM: {e}")))?;
            if let Some(status) = status {
                let helper = self.drain_events();
                self.exit = Some(helper.map_or_else(|| to_exit(status), VmExit::HelperDied));
            }
        }
        Ok(self.exit)
    }

    fn kill(&mut self) -> Result<(), BackendError> {
        self.signal(Signal::SIGKILL)
    }

    fn pause(&mut self) -> Result<(), BackendError> {
        self.signal(Signal::SIGSTOP)
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        self.signal(Signal::SIGCONT)
    }
}

impl KrunVm {
    /// Signals the VMM child while it runs (unreaped, its pid cannot be another process's).
    fn signal(&mut self, sig: Signal) -> Result<(), BackendError> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        match signal::kill(pid_of(&self.child), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(err) => Err(BackendError::Supervisor(format!(
                "cannot send {sig} to the VMM: {err}"
            ))),
        }
    }
}

impl Drop for KrunVm {
    /// Closes the lifeline (the child removes the run directory and exits), waits for that,
    /// bounded, kills a child that does not go, and removes what is left.
    fn drop(&mut self) {
        drop(self.lifeline.take());
        // A paused VMM would not see its lifeline close.
        let _ = self.signal(Signal::SIGCONT);
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    tracing::warn!("the libkrun VMM did not exit; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        if let Some(run_dir) = self.run_dir.take() {
            match run_dir.remove() {
                Ok(()) => {}
                // The child removed it already.
                Err(RunDirError::Io(failed))
                    if failed.source.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => tracing::warn!(%err, "cannot remove the run directory"),
            }
        }
    }
}

/// Writes the configuration, starts `krunbox __krun-vmm` on it and a thread that reads its
/// events.
fn spawn_child(
    config: &KrunVmConfig,
    layout: &Layout,
    dry_run: bool,
    secrets: &crate::self_spawn::SecretValues,
) -> Result<(Child, mpsc::Receiver<Event>), BackendError> {
    config.write(&layout.config())?;
    let vmm_log =
        std::fs::File::create(layout.log("vmm")).map_err(io("create", &layout.log("vmm")))?;
    let (exe, mut command) = self_spawn::command(Job::KRUN_VMM)
        .map_err(io("find", Path::new("the krunbox executable")))?;
    command
        .arg(layout.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(vmm_log)
        // Its own process group: terminal signals (Ctrl-C) go to krunbox run, not the VMM.
        .process_group(0);
    if dry_run {
        command.arg("--no-enter");
    }
    // libkrun dlopens libkrunfw by bare name: add Homebrew's directory to dyld's fallback.
    #[cfg(target_os = "macos")]
    command.env(
        "DYLD_FALLBACK_LIBRARY_PATH",
        super::probe::library_path_for_vmm(),
    );
    die_with_parent(&mut command);
    let pipe = self_spawn::hand_secrets(&mut command, secrets)
        .map_err(io("hand the secrets to", Path::new("the libkrun VMM")))?;
    let mut process = command.spawn().map_err(|e| BackendError::Helper {
        name: "the libkrun VMM".into(),
        detail: format!("cannot run {}: {e}", exe.display()),
    })?;
    drop(pipe);
    let Some(stdout) = process.stdout.take() else {
        let (_, events) = mpsc::channel();
        return Ok((process, events));
    };
    match self_spawn::read_events(stdout, "krun-vmm-events") {
        Ok(events) => Ok((process, events)),
        Err(err) => {
            let _ = process.kill();
            let _ = process.wait();
            Err(BackendError::Supervisor(format!(
                "cannot start a thread: {err}"
            )))
        }
    }
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

/// The child gets SIGTERM when this process's spawning thread ends (PR_SET_PDEATHSIG is tied
/// to the thread: `krunbox run` starts VMs from its main thread), and refuses to start if the
/// parent is already gone.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec the closure only calls prctl(2) and getppid(2), which are
    // async-signal-safe, and builds an io::Error from a raw errno (no allocation).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// No parent-death signal outside Linux: the lifeline alone ends the child when krunbox dies.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}
