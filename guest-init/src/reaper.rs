//! The one owner of `waitpid`.
//!
//! As PID 1 the agent inherits every orphan of the guest, and its own children's statuses must
//! reach the exec that started them exactly once. So a single reaper calls `waitpid(-1)` on
//! every SIGCHLD, and a spawn happens while holding the table lock the reaper takes: a child
//! cannot be reaped between its spawn and the registration of its pid. Statuses of unknown
//! pids (orphans) are logged and dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a tracked child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// Exited with a code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

/// Tracked children: pid → where its exit goes.
#[derive(Default)]
pub struct ProcessTable {
    waiting: Mutex<HashMap<Pid, oneshot::Sender<ChildExit>>>,
}

impl ProcessTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<Pid, oneshot::Sender<ChildExit>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns a child with `spawn` while holding the table lock and registers it.
    pub fn spawn_tracked<E>(
        &self,
        spawn: impl FnOnce() -> Result<Pid, E>,
    ) -> Result<(Pid, oneshot::Receiver<ChildExit>), E> {
        let mut waiting = self.lock();
        let pid = spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Process groups (= session leaders' pids) of the running tracked children.
    pub fn running(&self) -> Vec<Pid> {
        self.lock().keys().copied().collect()
    }

    /// Sends `signal` to the process group of every tracked child.
    pub fn signal_all(&self, signal: Signal) {
        for pid in self.running() {
            if let Err(err) = killpg(pid, signal) {
                tracing::debug!(%pid, %err, "forwarding {signal} failed");
            }
        }
    }

    /// Reaps every child that has exited.
    fn reap(&self) {
        let mut waiting = self.lock();
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ChildExit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ChildExit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(other) => {
                    tracing::trace!(?other, "ignored wait status");
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(%err, "waitpid failed");
                    return;
                }
            };
            match waiting.remove(&pid) {
                // The receiver may be gone (exec abandoned); nothing else to do then.
                Some(tx) => drop(tx.send(exit)),
                None => tracing::debug!(%pid, ?exit, "reaped an orphan"),
            }
        }
    }
}

/// Runs the reaper until the process ends.
pub fn start(table: Arc<ProcessTable>) -> std::io::Result<()> {
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        // Children may have exited before the handler was installed.
        table.reap();
        while sigchld.recv().await.is_some() {
            table.reap();
        }
    });
    Ok(())
}
