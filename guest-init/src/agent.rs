//! What every connection of the agent shares: the process table, uptime, and the shutdown path.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::reaper::ProcessTable;

/// The boot clock when guest-init started ([`note_init_started`]).
static INIT_STARTED_MS: OnceLock<u64> = OnceLock::new();

/// The guest's boot clock (`CLOCK_BOOTTIME`) in ms: time since the kernel started keeping it.
pub fn boot_clock_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            let ms = i128::from(t.tv_sec()) * 1000 + i128::from(t.tv_nsec()) / 1_000_000;
            u64::try_from(ms).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Notes when guest-init started (the first thing `main` does); the handshake reports it.
pub fn note_init_started() {
    let _ = INIT_STARTED_MS.set(boot_clock_ms());
}

/// The boot clock when guest-init started (0 if not noted).
pub fn init_started_ms() -> u64 {
    INIT_STARTED_MS.get().copied().unwrap_or(0)
}

/// The variables the agent gives every exec.
#[derive(Debug, Default)]
pub struct DefaultEnv {
    /// Set unless the request sets them (e.g. `SSH_AUTH_SOCK`, the CA bundle variables).
    pub fill: Vec<(String, String)>,
    /// Set whatever the request (an image's `ENV`, a `-e`) says: the secrets' placeholders,
    /// so no request can put a value in their place.
    pub force: Vec<(String, String)>,
}

/// Shared agent state.
pub struct Agent {
    pub table: Arc<ProcessTable>,
    pub started: Instant,
    /// Variables every exec gets.
    pub default_env: DefaultEnv,
    shutdown: mpsc::UnboundedSender<i32>,
}

impl Agent {
    /// The agent, and the receiver of shutdown requests (with the exit status to report).
    pub fn new(
        table: Arc<ProcessTable>,
        default_env: DefaultEnv,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<i32>) {
        let (shutdown, requests) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                table,
                started: Instant::now(),
                default_env,
                shutdown,
            }),
            requests,
        )
    }

    /// Asks the main loop to shut down with `status`.
    pub fn request_shutdown(&self, status: i32) {
        let _ = self.shutdown.send(status);
    }
}
