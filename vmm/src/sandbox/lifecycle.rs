//! Starting, stopping and removing a sandbox: what `krunbox start/stop/rm` do, under the
//! sandbox's own lock so two of them never interleave on one sandbox (and never wait on
//! another sandbox).

use std::sync::mpsc;
use std::time::Duration;

use krunbox_protocol::transport::AgentAddress;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::monitor::{Event, PAUSE_SIGNAL, RESUME_SIGNAL};
use super::state::Status;
use super::store::{Sandbox, MONITOR_LOG_FILE};
use super::SandboxError;
use crate::self_spawn::{self, Job};

/// Extra time `start` gives the monitor beyond the boot timeout (starting the helpers).
const START_MARGIN: Duration = Duration::from_secs(60);
/// How long a monitor may take to stop its VM after SIGTERM.
const KILL_GRACE: Duration = Duration::from_secs(15);
/// How long the monitor may take to pause or resume its VM.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `stop` waits for the agent to take the shutdown request.
const SHUTDOWN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the sandbox's VM and waits until its agent answers; returns the boot time in ms.
/// Starting a running sandbox does nothing.
pub fn start(sandbox: &Sandbox) -> Result<Option<u64>, SandboxError> {
    let _lock = sandbox.lock()?;
    if sandbox.monitor_alive()? {
        return Ok(None);
    }
    let spec = sandbox.spec()?;
    // The monitor, and the gateway under it, inherit the secrets' values from here.
    if let crate::backend::Network::User(network) = &spec.network {
        crate::cli::net_args::check_secrets(&network.config.secrets).map_err(|err| {
            SandboxError::StartFailed {
                name: sandbox.name().to_owned(),
                message: err.to_string(),
            }
        })?;
    }
    let log_path = sandbox.file(MONITOR_LOG_FILE);
    // The monitor answers once (ready or failed), then points its stdout elsewhere.
    let (mut child, rx) = self_spawn::spawn_detached::<Event>(
        Job::SANDBOX_MONITOR,
        sandbox.dir(),
        &log_path,
        "monitor-events",
    )
    .map_err(|message| SandboxError::StartFailed {
        name: sandbox.name().to_owned(),
        message,
    })?;
    let limit = Duration::from_secs(spec.boot_timeout_secs) + START_MARGIN;
    let answer = rx.recv_timeout(limit);
    // The monitor is not our child for long: it runs on; reap it only if it already ended.
    let _ = child.try_wait();
    match answer {
        Ok(Event::Ready { boot_ms }) => Ok(Some(boot_ms)),
        Ok(Event::Failed { message }) => Err(SandboxError::StartFailed {
            name: sandbox.name().to_owned(),
            message,
        }),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = kill(pid_of(child.id()), Signal::SIGTERM);
            Err(SandboxError::StartFailed {
                name: sandbox.name().to_owned(),
                message: format!(
                    "no answer from its monitor within {limit:?}; see {}",
                    log_path.display()
                ),
            })
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(SandboxError::StartFailed {
                name: sandbox.name().to_owned(),
                message: format!(
                    "its monitor exited without an answer ({status}); its log:\n{}",
                    crate::backend::log_tail(&log_path, 10)
                ),
            })
        }
    }
}

/// Stops the sandbox: asks the guest to power off, waits up to `grace`, then stops the VM
/// hard. Stopping a sandbox that does not run does nothing. Returns whether it ran.
pub fn stop(sandbox: &Sandbox, grace: Duration) -> Result<bool, SandboxError> {
    let _lock = sandbox.lock()?;
    stop_locked(sandbox, grace)
}

fn stop_locked(sandbox: &Sandbox, grace: Duration) -> Result<bool, SandboxError> {
    if !sandbox.monitor_alive()? {
        return Ok(false);
    }
    sandbox.request_stop()?;
    if sandbox.status()? == Status::Paused && !grace.is_zero() {
        // Thawed first, so the guest can take the power-off request and shut down cleanly.
        if let Err(err) = change_pause(sandbox, Status::Paused, Status::Running) {
            tracing::warn!(%err, "cannot resume the paused sandbox before stopping it");
        }
    }
    let state = sandbox.state()?;
    if let Some(address) = state
        .as_ref()
        .and_then(|s| s.agent.as_deref())
        .and_then(|a| a.parse::<AgentAddress>().ok())
    {
        if let Err(err) = request_power_off(&address) {
            tracing::debug!(%err, "the agent did not take the shutdown request");
        }
    }
    if !grace.is_zero() && sandbox.wait_for_monitor_exit(grace)? {
        return Ok(true);
    }
    terminate_monitor(sandbox, state.map(|s| s.monitor_pid))?;
    Ok(true)
}

/// SIGTERM to the monitor (it stops the VM), then SIGKILL (the backend stops the VM when its
/// monitor dies).
fn terminate_monitor(sandbox: &Sandbox, pid: Option<u32>) -> Result<(), SandboxError> {
    let Some(pid) = pid else {
        return Err(SandboxError::Unresponsive(sandbox.name().to_owned()));
    };
    tracing::debug!(pid, "stopping the monitor");
    let _ = kill(pid_of(pid), Signal::SIGTERM);
    if sandbox.wait_for_monitor_exit(KILL_GRACE)? {
        return Ok(());
    }
    tracing::warn!(pid, "the monitor did not stop; killing it");
    let _ = kill(pid_of(pid), Signal::SIGKILL);
    if sandbox.wait_for_monitor_exit(KILL_GRACE)? {
        Ok(())
    } else {
        Err(SandboxError::Unresponsive(sandbox.name().to_owned()))
    }
}

fn request_power_off(address: &AgentAddress) -> Result<(), String> {
    super::attach::with_agent(address, SHUTDOWN_REQUEST_TIMEOUT, |client| async move {
        client.shutdown(0).await
    })
}

/// Pauses a running sandbox: its VM is frozen (no CPU, memory kept) until [`resume`].
/// Returns whether it ran (pausing a paused sandbox does nothing).
pub fn pause(sandbox: &Sandbox) -> Result<bool, SandboxError> {
    let _lock = sandbox.lock()?;
    change_pause(sandbox, Status::Running, Status::Paused)
}

/// Resumes a paused sandbox. Returns whether it was paused (resuming a running sandbox does
/// nothing).
pub fn resume(sandbox: &Sandbox) -> Result<bool, SandboxError> {
    let _lock = sandbox.lock()?;
    change_pause(sandbox, Status::Paused, Status::Running)
}

/// Asks the monitor to take the sandbox from `from` to `to` (running and paused, either way)
/// and waits until it records that it did. Already in `to`: nothing to do.
fn change_pause(sandbox: &Sandbox, from: Status, to: Status) -> Result<bool, SandboxError> {
    let status = sandbox.status()?;
    if status == to {
        return Ok(false);
    }
    if status != from {
        return Err(SandboxError::NotRunning {
            name: sandbox.name().to_owned(),
            status: status.to_string(),
        });
    }
    let (signal, action) = if to == Status::Paused {
        (PAUSE_SIGNAL, "pause")
    } else {
        (RESUME_SIGNAL, "resume")
    };
    let monitor = sandbox.state()?.map(|s| s.monitor_pid);
    // The monitor holds its lock (checked above, under the sandbox's lock, which a new start
    // would need): the recorded pid is the monitor's.
    if let Some(pid) = monitor {
        let _ = kill(pid_of(pid), signal);
    }
    let deadline = std::time::Instant::now() + PAUSE_TIMEOUT;
    loop {
        let now = sandbox.status()?;
        if now == to {
            return Ok(true);
        }
        if !now.is_running() {
            return Err(SandboxError::NotRunning {
                name: sandbox.name().to_owned(),
                status: now.to_string(),
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(SandboxError::NoAnswer {
                name: sandbox.name().to_owned(),
                action,
                waited: PAUSE_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes a sandbox; a running one only with `force` (then stopped at once).
pub fn remove(sandbox: Sandbox, force: bool) -> Result<(), SandboxError> {
    let lock = sandbox.lock()?;
    if sandbox.monitor_alive()? {
        if !force {
            return Err(SandboxError::Running(sandbox.name().to_owned()));
        }
        stop_locked(&sandbox, Duration::ZERO)?;
    }
    // Still holding the lock: a concurrent start waits and then finds no sandbox.
    let name = sandbox.name().to_owned();
    let result = sandbox.remove();
    drop(lock);
    if result.is_ok() {
        // A --workspace=review copy goes with it, unless it holds undecided changes.
        if let Err(err) = crate::review::release(&name) {
            tracing::warn!(%err, "the sandbox's workspace copy");
        }
    }
    result
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}
