//! Waiting for a started VM's agent: the race that `krunbox run`/`exec` (`cli/session.rs`) and
//! a sandbox's monitor (`sandbox/monitor.rs`) both run. The agent answering its handshake wins
//! against the VM ending, a signal and the boot timeout; whatever wins, a failure carries the
//! end of the guest's console and the VM's own diagnostics.

use std::future::Future;
use std::time::Duration;

use krunbox_protocol::client::Client;

use super::{log_tail, VmHandle};

/// Console lines a failure shows.
pub const CONSOLE_TAIL_LINES: usize = 30;
/// How often the VM is asked whether it ended.
const POLL: Duration = Duration::from_millis(20);

/// Why no agent answered.
#[derive(Debug, thiserror::Error)]
pub enum AgentWaitError {
    /// The agent did not answer in time (the VM still runs; the caller decides its fate).
    #[error("the guest agent did not come up within {timeout}s ({detail}); last console lines:\n{console}")]
    Timeout {
        /// The timeout, in seconds.
        timeout: u64,
        /// The last connection error.
        detail: String,
        /// The console tail and diagnostics.
        console: String,
    },
    /// The VM ended first.
    #[error("the VM stopped before its agent came up ({exit}); last console lines:\n{console}")]
    VmEnded {
        /// How it ended.
        exit: String,
        /// The console tail and diagnostics.
        console: String,
    },
    /// A signal came first (the VM still runs).
    #[error("interrupted while the VM was booting")]
    Interrupted {
        /// The signal's number.
        signal: i32,
    },
}

/// Waits until the agent of `vm` answers; the VM ending, `interrupt` resolving (to a signal
/// number) or `timeout` passing end the wait without one.
pub async fn wait_for_agent(
    vm: &mut dyn VmHandle,
    timeout: Duration,
    interrupt: impl Future<Output = i32>,
) -> Result<Client, AgentWaitError> {
    let address = vm.agent_address();
    let started = tokio::time::Instant::now();
    tokio::pin!(interrupt);
    // First, where the backend says so, until the guest says its agent listens: only watch.
    while !vm.agent_connectable() {
        if let Some(exit) = ended(vm) {
            return Err(AgentWaitError::VmEnded {
                exit,
                console: console_tail(vm),
            });
        }
        if started.elapsed() >= timeout {
            return Err(AgentWaitError::Timeout {
                timeout: timeout.as_secs(),
                detail: "the guest never said its agent listens".into(),
                console: console_tail(vm),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            signal = &mut interrupt => return Err(AgentWaitError::Interrupted { signal }),
        }
    }
    let left = timeout.saturating_sub(started.elapsed());
    let outcome = tokio::select! {
        client = Client::connect_with_retry(&address, left) => Ok(client),
        exit = vm_ended(vm) => Err(exit),
        signal = &mut interrupt => return Err(AgentWaitError::Interrupted { signal }),
    };
    match outcome {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => Err(AgentWaitError::Timeout {
            timeout: timeout.as_secs(),
            detail: err.to_string(),
            console: console_tail(vm),
        }),
        Err(exit) => Err(AgentWaitError::VmEnded {
            exit,
            console: console_tail(vm),
        }),
    }
}

/// Resolves when the VM ends, with how it ended in words.
pub async fn vm_ended(vm: &mut dyn VmHandle) -> String {
    loop {
        if let Some(exit) = ended(vm) {
            return exit;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How the VM ended, in words, if it has.
fn ended(vm: &mut dyn VmHandle) -> Option<String> {
    match vm.try_wait() {
        Ok(Some(exit)) => Some(exit.to_string()),
        Ok(None) => None,
        Err(err) => Some(err.to_string()),
    }
}

/// The end of the guest's console and the VM's diagnostics, for an error message.
pub fn console_tail(vm: &dyn VmHandle) -> String {
    let mut text = log_tail(&vm.console_log(), CONSOLE_TAIL_LINES);
    if text.trim().is_empty() {
        text = "(the console is empty)".into();
    }
    let diagnostics = vm.diagnostics();
    if !diagnostics.is_empty() {
        text.push('\n');
        text.push_str(&diagnostics);
    }
    text
}
