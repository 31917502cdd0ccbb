//! The sandbox monitor: a detached `krunbox` process (hidden subcommand) that keeps one
//! sandbox's VM running after the CLI that started it exits.
//!
//! ```text
//! krunbox start ──spawn (setsid)──▶ monitor ──Backend::start──▶ VM (QEMU: its supervisor,
//!               ◀─ ready | failed ─┘  │                              qemu, virtiofsd, ...)
//!                  (stdout, one line) └─ holds monitor.lock, writes state.json
//! ```
//!
//! It holds `monitor.lock` for its whole life (that lock is what "running" means), starts the
//! VM through the backend, waits for the guest agent, says `ready` (or `failed`) on stdout —
//! the pipe `krunbox start` reads — and then only watches: when the VM ends it records how and
//! why in `state.json`, saves the console log, and exits, which releases the VM's resources
//! (the backend's handle drop). SIGTERM makes it stop the VM at once (`stop` after its grace
//! period, `rm -f`). If it is killed with SIGKILL, the backend still stops the VM (the QEMU
//! supervisor's lifeline closes) and `ps` shows the sandbox as exited with that reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::spec::now;
use super::state::{Phase, State};
use super::store::{Sandbox, CONSOLE_FILE};
use crate::backend::agent_wait::{wait_for_agent, AgentWaitError};
use crate::backend::{self, log_tail, VmExit, VmHandle};
use crate::self_spawn::{emit, ENDING_SIGNALS};

/// How often the monitor looks at the VM and its signals.
const POLL: Duration = Duration::from_millis(100);

/// What the monitor tells `krunbox start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The agent answered.
    Ready {
        /// Milliseconds from start to the agent's answer.
        boot_ms: u64,
    },
    /// The sandbox could not be started.
    Failed {
        /// Why, with the console tail.
        message: String,
    },
}

/// Points stdout at /dev/null: `krunbox start` has its answer and may be gone.
fn detach_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

/// Runs the monitor for the sandbox in `dir`; returns the process exit code.
pub fn main(dir: &std::path::Path) -> i32 {
    // stderr is monitor.log (set up by `krunbox start`).
    crate::self_spawn::init_job_logging(std::io::stderr);
    let sandbox = match Sandbox::at_dir(dir) {
        Ok(sandbox) => sandbox,
        Err(err) => {
            emit(&Event::Failed {
                message: err.to_string(),
            });
            return 1;
        }
    };
    let _running = match sandbox.lock_for_monitor(Duration::from_secs(10)) {
        Ok(guard) => guard,
        Err(err) => {
            emit(&Event::Failed {
                message: err.to_string(),
            });
            return 1;
        }
    };
    let requests = Requests::install();
    sandbox.stop_requested(true);
    let mut state = State::starting(std::process::id(), now());
    let started = Instant::now();
    let result = start_vm(&sandbox, &mut state, &requests.terminate, started);
    let mut vm = match result {
        Ok(vm) => vm,
        Err(message) => {
            tracing::error!(%message, "the sandbox did not start");
            emit(&Event::Failed {
                message: message.clone(),
            });
            state.phase = Phase::Exited;
            state.finished_at = Some(now());
            state.reason = Some(format!("failed to start: {message}"));
            let _ = sandbox.write_state(&state);
            return 1;
        }
    };
    emit(&Event::Ready {
        boot_ms: state.boot_ms.unwrap_or_default(),
    });
    detach_stdout();
    let exit = watch(vm.as_mut(), &requests, &sandbox, &mut state);
    let stopped = sandbox.stop_requested(true);
    let reason = describe(exit.clone(), stopped, &*vm);
    tracing::info!(%reason, "the VM ended");
    save_console(&sandbox, &vm.console_log());
    state.phase = Phase::Exited;
    state.finished_at = Some(now());
    state.vm_exit = exit.ok();
    state.reason = Some(reason);
    state.console = None;
    if let Err(err) = sandbox.write_state(&state) {
        tracing::error!(%err, "cannot record how the VM ended");
    }
    // Dropping the handle removes the VM's processes, sockets and run directory.
    drop(vm);
    0
}

/// Keeps the console of the run that ends for `krunbox logs` (the run directory goes away).
fn save_console(sandbox: &Sandbox, console: &std::path::Path) {
    if let Err(err) = std::fs::copy(console, sandbox.file(CONSOLE_FILE)) {
        tracing::warn!(%err, "cannot save the console log");
    }
}

/// Starts the VM and waits for its agent.
fn start_vm(
    sandbox: &Sandbox,
    state: &mut State,
    terminate: &AtomicBool,
    started: Instant,
) -> Result<Box<dyn VmHandle>, String> {
    let spec = sandbox.spec().map_err(|e| e.to_string())?;
    let guest_init = crate::guest::agent::locate().map_err(|e| e.to_string())?;
    let backend =
        backend::select(spec.backend, spec.kernel.is_some()).map_err(|e| e.to_string())?;
    state.backend = Some(backend.kind().to_string());
    sandbox.write_state(state).map_err(|e| e.to_string())?;
    // The image `create` resolved (not its name again); its lease keeps rmi/prune away while
    // the VM runs.
    let root =
        crate::guest::rootfs::reopen(&spec.rootfs, spec.overlay).map_err(|e| e.to_string())?;
    let mut vm_spec = spec.vm_spec(guest_init);
    vm_spec.rootfs = root.rootfs.clone();
    vm_spec.root_overlay = root.overlay;
    if let crate::backend::Network::User(network) = &mut vm_spec.network {
        // The sandbox keeps its network's decisions across restarts, as JSON records
        // (`krunbox logs --network` shows them as text, or as they are with --format json).
        network.log = Some(sandbox.file(crate::sandbox::store::NETWORK_LOG_FILE));
        network.log_format = crate::backend::net::LogFormat::Json;
        network.sandbox = Some(sandbox.name().to_owned());
    }
    let volumes = crate::volumes::VolumeStore::new()
        .and_then(|store| store.lease_all(vm_spec.shares.iter().map(|d| d.host_path.as_path())))
        .map_err(|e| e.to_string())?;
    let vm = backend.start(&vm_spec).map_err(|e| e.to_string())?;
    let mut vm: Box<dyn VmHandle> = Box::new(Leased {
        vm,
        _root: root,
        _volumes: volumes,
    });
    state.agent = Some(vm.agent_address().to_string());
    state.console = Some(vm.console_log());
    sandbox.write_state(state).map_err(|e| e.to_string())?;
    tracing::info!(agent = %vm.agent_address(), "VM started; waiting for its agent");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let timeout = Duration::from_secs(spec.boot_timeout_secs);
    let interrupted = async {
        while !terminate.load(Ordering::Relaxed) {
            tokio::time::sleep(POLL).await;
        }
        libc::SIGTERM
    };
    let outcome = runtime.block_on(wait_for_agent(vm.as_mut(), timeout, interrupted));
    match outcome {
        Ok(_client) => {
            let boot_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            state.boot_ms = Some(boot_ms);
            state.phase = Phase::Running;
            sandbox.write_state(state).map_err(|e| e.to_string())?;
            tracing::info!(boot_ms, "the agent answered");
            Ok(vm)
        }
        Err(err) => {
            // `krunbox logs` shows the console of a failed start too.
            save_console(sandbox, &vm.console_log());
            if !matches!(err, AgentWaitError::VmEnded { .. }) {
                let _ = vm.kill();
            }
            Err(err.to_string())
        }
    }
}

/// A VM, the image lease it boots from and the leases of the volumes it shares, dropped
/// together (the VM first).
struct Leased {
    vm: Box<dyn VmHandle>,
    _root: crate::guest::rootfs::PreparedRoot,
    _volumes: Vec<crate::volumes::VolumeLease>,
}

impl VmHandle for Leased {
    fn agent_address(&self) -> krunbox_protocol::transport::AgentAddress {
        self.vm.agent_address()
    }
    fn console_log(&self) -> std::path::PathBuf {
        self.vm.console_log()
    }
    fn diagnostics(&self) -> String {
        self.vm.diagnostics()
    }
    fn agent_connectable(&mut self) -> bool {
        self.vm.agent_connectable()
    }
    fn try_wait(&mut self) -> Result<Option<VmExit>, crate::backend::BackendError> {
        self.vm.try_wait()
    }
    fn kill(&mut self) -> Result<(), crate::backend::BackendError> {
        self.vm.kill()
    }
    fn pause(&mut self) -> Result<(), crate::backend::BackendError> {
        self.vm.pause()
    }
    fn resume(&mut self) -> Result<(), crate::backend::BackendError> {
        self.vm.resume()
    }
}

/// What other krunbox processes ask of the monitor, by signal (as `stop` does): SIGTERM (and
/// SIGINT, SIGHUP) stops the VM, [`PAUSE_SIGNAL`] pauses it and [`RESUME_SIGNAL`] resumes it.
/// The monitor answers by the phase it records in `state.json`.
struct Requests {
    terminate: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    resume: Arc<AtomicBool>,
}

/// The signal `krunbox pause` sends the monitor.
pub const PAUSE_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR1;
/// The signal `krunbox resume` sends the monitor.
pub const RESUME_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR2;

impl Requests {
    fn install() -> Self {
        let requests = Self {
            terminate: Arc::new(AtomicBool::new(false)),
            pause: Arc::new(AtomicBool::new(false)),
            resume: Arc::new(AtomicBool::new(false)),
        };
        let ending = ENDING_SIGNALS.map(|sig| (sig, &requests.terminate));
        let flags = [
            (PAUSE_SIGNAL as i32, &requests.pause),
            (RESUME_SIGNAL as i32, &requests.resume),
        ];
        for (sig, flag) in ending.into_iter().chain(flags) {
            if let Err(err) = signal_hook::flag::register(sig, Arc::clone(flag)) {
                tracing::warn!(%err, sig, "cannot handle a signal");
            }
        }
        requests
    }
}

/// Until the VM ends: a stop request stops it; pause and resume requests are carried out and
/// recorded.
fn watch(
    vm: &mut dyn VmHandle,
    requests: &Requests,
    sandbox: &Sandbox,
    state: &mut State,
) -> Result<VmExit, String> {
    let mut killed = false;
    loop {
        match vm.try_wait() {
            Ok(Some(exit)) => return Ok(exit),
            Ok(None) => {}
            Err(err) => return Err(err.to_string()),
        }
        if !killed && requests.terminate.load(Ordering::Relaxed) {
            tracing::info!("asked to stop the VM by a signal");
            if let Err(err) = vm.kill() {
                tracing::warn!(%err, "cannot stop the VM");
            }
            killed = true;
        }
        if requests.pause.swap(false, Ordering::Relaxed) && state.phase == Phase::Running {
            match vm.pause() {
                Ok(()) => {
                    tracing::info!("paused");
                    state.phase = Phase::Paused;
                    state.paused_at = Some(now());
                    record(sandbox, state);
                }
                Err(err) => tracing::error!(%err, "cannot pause the VM"),
            }
        }
        if requests.resume.swap(false, Ordering::Relaxed) && state.phase == Phase::Paused {
            match vm.resume() {
                Ok(()) => {
                    tracing::info!("resumed");
                    state.phase = Phase::Running;
                    state.paused_at = None;
                    record(sandbox, state);
                }
                Err(err) => tracing::error!(%err, "cannot resume the VM"),
            }
        }
        std::thread::sleep(POLL);
    }
}

fn record(sandbox: &Sandbox, state: &State) {
    if let Err(err) = sandbox.write_state(state) {
        tracing::error!(%err, "cannot record the sandbox's state");
    }
}

/// Why the VM ended, in words for `ps`.
fn describe(exit: Result<VmExit, String>, stopped: bool, vm: &dyn VmHandle) -> String {
    let exit = match exit {
        Ok(exit) => exit,
        Err(err) => return format!("lost the VM: {err}"),
    };
    if stopped {
        return match exit {
            VmExit::Exited(0) => "stopped".into(),
            other => format!("stopped: {other}"),
        };
    }
    match exit {
        VmExit::Exited(0) => {
            let console = log_tail(&vm.console_log(), 5);
            if console.contains("Kernel panic") {
                format!(
                    "the guest kernel panicked: {}",
                    console
                        .lines()
                        .find(|l| l.contains("Kernel panic"))
                        .unwrap_or_default()
                        .trim()
                )
            } else {
                "the guest powered off".into()
            }
        }
        VmExit::HelperDied(_) => exit.to_string(),
        VmExit::Killed(signal) => format!(
            "the VMM crashed: it was killed by signal {signal} ({})",
            signal_name(signal)
        ),
        VmExit::Exited(code) => {
            let diagnostics = vm.diagnostics();
            format!(
                "the VMM crashed: it exited with status {code}{}",
                if diagnostics.is_empty() {
                    String::new()
                } else {
                    format!("; {}", diagnostics.replace('\n', " "))
                }
            )
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str())
        .unwrap_or("unknown signal")
}
