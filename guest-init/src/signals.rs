//! Forwarding the agent's termination signals to the commands it runs.
//!
//! As PID 1 the agent is what `poweroff`, the host's ACPI button or a `kill -TERM 1` reach;
//! the commands are what should react, so SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and
//! SIGUSR2 go to the process group of every running exec. In host mode a SIGTERM or SIGINT
//! while nothing runs stops the agent (so a test or `Ctrl-C` can end it).

use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use crate::agent::Agent;

/// The signals forwarded, with tokio's view of each.
const FORWARDED: [(SignalKind, Signal); 6] = [
    (SignalKind::terminate(), Signal::SIGTERM),
    (SignalKind::interrupt(), Signal::SIGINT),
    (SignalKind::hangup(), Signal::SIGHUP),
    (SignalKind::quit(), Signal::SIGQUIT),
    (SignalKind::user_defined1(), Signal::SIGUSR1),
    (SignalKind::user_defined2(), Signal::SIGUSR2),
];

/// Starts one forwarding task per signal.
pub fn forward(agent: &Arc<Agent>, pid1: bool) {
    for (kind, sig) in FORWARDED {
        let mut stream = match signal(kind) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%err, "cannot handle {sig}");
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let running = agent.table.running();
                tracing::info!(
                    count = running.len(),
                    "forwarding {sig} to running commands"
                );
                if running.is_empty() && !pid1 && matches!(sig, Signal::SIGTERM | Signal::SIGINT) {
                    agent.request_shutdown(0);
                }
                agent.table.signal_all(sig);
            }
        });
    }
}
