//! What every connection of the agent shares: the process table, uptime, and the shutdown path.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::reaper::ProcessTable;

/// Shared agent state.
pub struct Agent {
    pub table: Arc<ProcessTable>,
    pub started: Instant,
    /// Variables every exec gets unless its request sets them (e.g. `SSH_AUTH_SOCK`).
    pub default_env: Vec<(String, String)>,
    shutdown: mpsc::UnboundedSender<i32>,
}

impl Agent {
    /// The agent, and the receiver of shutdown requests (with the exit status to report).
    pub fn new(
        table: Arc<ProcessTable>,
        default_env: Vec<(String, String)>,
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
