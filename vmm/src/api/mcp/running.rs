//! The commands of `exec` calls under way, so that nothing an MCP client started outlives it:
//! a call the client cancels, or whose future the service drops, kills its command
//! ([`KillUnlessDone`]); a client that leaves has every command still running killed
//! ([`Running::kill_all`]), and a call that gets its command only after that kills it at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use krunbox_protocol::client::ExecControl;

/// How long the server, once its client left, waits for the kills and for calls still
/// starting their command.
const KILL_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    /// Commands by call.
    commands: HashMap<u64, ExecControl>,
    /// Calls between their start and their command's registration.
    starting: usize,
    /// The client left: no command may be registered any more.
    closed: bool,
    next_call: u64,
}

/// The commands of the `exec` calls under way.
#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<State>>);

impl Running {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call starts: held until its command is armed (or the call ends), so that
    /// [`kill_all`](Self::kill_all) waits for a command on its way.
    pub fn starting(&self) -> Starting {
        self.lock().starting += 1;
        Starting(self.clone())
    }

    /// Kills every command still under way and refuses new ones (the client left); waits a
    /// little for the agents to have the kills, and for calls still getting their command.
    pub async fn kill_all(&self) {
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let (controls, starting) = {
                let mut state = self.lock();
                state.closed = true;
                let controls: Vec<ExecControl> =
                    state.commands.drain().map(|(_, control)| control).collect();
                (controls, state.starting)
            };
            // All at once, within the one deadline: an agent that does not answer holds the
            // server's end for `KILL_WAIT`, not that much per command.
            let kills = futures_util::future::join_all(controls.iter().map(kill));
            if tokio::time::timeout_at(deadline.into(), kills)
                .await
                .is_err()
            {
                tracing::debug!("could not kill every exec's command in time");
            }
            if starting == 0 || Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Kills a command, and returns once the agent has the kill (or after [`KILL_WAIT`]): the
/// server may end right after, its runtime and connections with it.
async fn kill(control: &ExecControl) {
    match tokio::time::timeout(KILL_WAIT, control.signal_delivered(libc::SIGKILL)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(%err, "could not kill an exec's command"),
        Err(_) => tracing::debug!("could not kill an exec's command in time"),
    }
}

/// A call on its way to its command (see [`Running::starting`]).
pub struct Starting(Running);

impl Starting {
    /// The call has its command: it is killed unless [disarmed](KillUnlessDone::disarm).
    /// After the client left (`Err`), the command is killed here and now.
    pub async fn arm(self, control: ExecControl) -> Result<KillUnlessDone, ()> {
        let call = {
            let mut state = self.0.lock();
            if state.closed {
                None
            } else {
                let call = state.next_call;
                state.next_call += 1;
                state.commands.insert(call, control.clone());
                Some(call)
            }
        };
        match call {
            Some(call) => Ok(KillUnlessDone {
                control: Some(control),
                running: self.0.clone(),
                call,
            }),
            None => {
                kill(&control).await;
                Err(())
            }
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.starting = state.starting.saturating_sub(1);
    }
}

/// Kills the command unless [disarmed](Self::disarm): a call the client cancelled, or one
/// whose future was dropped, leaves nothing running in the sandbox.
pub struct KillUnlessDone {
    control: Option<ExecControl>,
    running: Running,
    call: u64,
}

impl KillUnlessDone {
    /// The command ended on its own: nothing to kill.
    pub fn disarm(mut self) {
        self.control = None;
    }
}

impl Drop for KillUnlessDone {
    fn drop(&mut self) {
        let Some(control) = self.control.take() else {
            self.running.lock().commands.remove(&self.call);
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The command stays registered until it is killed: a server ending (its client left,
        // and the service dropped this call) kills it again in `kill_all` and waits, so it
        // is not lost with the runtime before this task has run.
        let (running, call) = (self.running.clone(), self.call);
        runtime.spawn(async move {
            kill(&control).await;
            running.lock().commands.remove(&call);
        });
    }
}
