//! What happened to a sandbox's VM: `state.json`, written only by its monitor (and by
//! `krunbox start` when the monitor cannot even start), and the status commands show.
//!
//! The file alone cannot say whether the VM still runs (a monitor killed with SIGKILL writes
//! nothing): the monitor's flock on `monitor.lock` can. [`Status`] combines both.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backend::VmExit;

/// Where the monitor is in the VM's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The VM boots; the agent has not answered yet.
    Starting,
    /// The agent answered.
    Running,
    /// Frozen by `krunbox pause` (memory kept, no CPU) until `krunbox resume`.
    Paused,
    /// The VM ended (or never started).
    Exited,
}

/// The recorded state of the last start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Where the monitor is.
    pub phase: Phase,
    /// The monitor's pid (meaningful while it holds `monitor.lock`).
    pub monitor_pid: u32,
    /// The backend that runs the VM.
    pub backend: Option<String>,
    /// The agent's address (`hybrid-vsock:PATH:PORT` or `unix:PATH`).
    pub agent: Option<String>,
    /// The guest console while the VM runs.
    pub console: Option<PathBuf>,
    /// Start time, seconds since the epoch.
    pub started_at: u64,
    /// Milliseconds from start to the agent's first answer.
    pub boot_ms: Option<u64>,
    /// When the VM was paused (while it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<u64>,
    /// When the VM ended.
    pub finished_at: Option<u64>,
    /// How the VMM process ended.
    pub vm_exit: Option<VmExit>,
    /// Why the sandbox is not running, in words.
    pub reason: Option<String>,
}

impl State {
    /// A monitor that just began.
    pub fn starting(monitor_pid: u32, started_at: u64) -> Self {
        Self {
            phase: Phase::Starting,
            monitor_pid,
            backend: None,
            agent: None,
            console: None,
            started_at,
            boot_ms: None,
            paused_at: None,
            finished_at: None,
            vm_exit: None,
            reason: None,
        }
    }
}

/// What `ps` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "kebab-case")]
pub enum Status {
    /// Never started.
    Created,
    /// The VM boots.
    Starting,
    /// The VM runs and its agent answered.
    Running,
    /// The VM is frozen (`krunbox resume` thaws it).
    Paused,
    /// The VM ended, and why.
    Exited(String),
}

impl Status {
    /// From the recorded state and whether a monitor holds the sandbox.
    pub fn of(state: Option<&State>, monitor_alive: bool) -> Self {
        match (state, monitor_alive) {
            (None, false) => Self::Created,
            (None, true) => Self::Starting,
            (Some(state), true) => match state.phase {
                Phase::Starting => Self::Starting,
                Phase::Running => Self::Running,
                Phase::Paused => Self::Paused,
                // The monitor is cleaning up after the VM.
                Phase::Exited => Self::Exited(state.reason.clone().unwrap_or_default()),
            },
            (Some(state), false) => match state.phase {
                Phase::Exited => Self::Exited(
                    state
                        .reason
                        .clone()
                        .unwrap_or_else(|| "unknown reason".into()),
                ),
                Phase::Starting | Phase::Running | Phase::Paused => Self::Exited(
                    "the sandbox monitor died (killed?); its VM was stopped with it".into(),
                ),
            },
        }
    }

    /// Whether the VM exists: it boots, runs or is paused.
    pub fn is_running(&self) -> bool {
        matches!(self, Self::Running | Self::Starting | Self::Paused)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Created => f.write_str("created"),
            Self::Starting => f.write_str("starting"),
            Self::Running => f.write_str("running"),
            Self::Paused => f.write_str("paused"),
            Self::Exited(reason) => write!(f, "exited ({reason})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_decides_whether_a_recorded_run_still_runs() {
        let mut state = State::starting(7, 1);
        assert_eq!(Status::of(None, false), Status::Created);
        assert_eq!(Status::of(Some(&state), true), Status::Starting);
        state.phase = Phase::Running;
        assert_eq!(Status::of(Some(&state), true), Status::Running);
        state.phase = Phase::Paused;
        assert_eq!(Status::of(Some(&state), true), Status::Paused);
        assert!(
            matches!(Status::of(Some(&state), false), Status::Exited(r) if r.contains("monitor died"))
        );
        state.phase = Phase::Running;
        assert!(
            matches!(Status::of(Some(&state), false), Status::Exited(r) if r.contains("monitor died"))
        );
        state.phase = Phase::Exited;
        state.reason = Some("the guest powered off".into());
        assert_eq!(
            Status::of(Some(&state), false).to_string(),
            "exited (the guest powered off)"
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut state = State::starting(42, 1000);
        state.vm_exit = Some(VmExit::Killed(9));
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<State>(&text).unwrap(), state);
    }
}
