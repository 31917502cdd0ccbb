//! A running sandbox's VM seen from another process (`krunbox exec`): the [`VmHandle`] the
//! shared session code talks to. It neither stops the VM nor cleans up when dropped: the
//! monitor owns the VM.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use krunbox_protocol::transport::AgentAddress;

use super::state::Status;
use super::store::{Sandbox, CONSOLE_FILE};
use super::SandboxError;
use crate::backend::{BackendError, VmExit, VmHandle};

/// How often the sandbox's liveness is checked (a lock probe).
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Connects to the agent at `address` and runs `job` with the client, on a runtime of its
/// own, all within `limit`: a one-off request from a process that has no runtime (`stop`'s
/// power-off, a pool member's warm-up). Errors are messages, for logs.
pub fn with_agent<T, F, Fut>(address: &AgentAddress, limit: Duration, job: F) -> Result<T, String>
where
    F: FnOnce(krunbox_protocol::client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, krunbox_protocol::client::ClientError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let attempt = async {
            let client = krunbox_protocol::client::Client::connect(address).await?;
            job(client).await
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    })
}

/// An attachment to a running sandbox.
pub struct AttachedVm {
    sandbox: Sandbox,
    address: AgentAddress,
    console: PathBuf,
    last_check: Instant,
    ended: Option<VmExit>,
}

impl AttachedVm {
    /// Attaches to `sandbox`, which must be running.
    pub fn new(sandbox: Sandbox) -> Result<Self, SandboxError> {
        let status = sandbox.status()?;
        if status == Status::Paused {
            return Err(SandboxError::Paused(sandbox.name().to_owned()));
        }
        if status != Status::Running {
            return Err(SandboxError::NotRunning {
                name: sandbox.name().to_owned(),
                status: status.to_string(),
            });
        }
        let state = sandbox.state()?.ok_or_else(|| SandboxError::NotRunning {
            name: sandbox.name().to_owned(),
            status: "created".into(),
        })?;
        let address = state
            .agent
            .as_deref()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| SandboxError::NotRunning {
                name: sandbox.name().to_owned(),
                status: "without an agent address".into(),
            })?;
        let console = state
            .console
            .clone()
            .unwrap_or_else(|| sandbox.file(CONSOLE_FILE));
        Ok(Self {
            sandbox,
            address,
            console,
            last_check: Instant::now(),
            ended: None,
        })
    }
}

impl VmHandle for AttachedVm {
    fn agent_address(&self) -> AgentAddress {
        self.address.clone()
    }

    fn console_log(&self) -> PathBuf {
        if self.console.exists() {
            self.console.clone()
        } else {
            self.sandbox.file(CONSOLE_FILE)
        }
    }

    fn try_wait(&mut self) -> Result<Option<VmExit>, BackendError> {
        if self.ended.is_some() {
            return Ok(self.ended);
        }
        if self.last_check.elapsed() < CHECK_EVERY {
            return Ok(None);
        }
        self.last_check = Instant::now();
        match self.sandbox.monitor_alive() {
            Ok(true) => Ok(None),
            Ok(false) => {
                let state = self.sandbox.state().ok().flatten();
                match state.and_then(|s| s.vm_exit) {
                    Some(exit) => {
                        self.ended = Some(exit);
                        Ok(self.ended)
                    }
                    None => Err(BackendError::Supervisor(format!(
                        "sandbox {} stopped",
                        self.sandbox.name()
                    ))),
                }
            }
            Err(err) => Err(BackendError::Supervisor(err.to_string())),
        }
    }

    /// The VM belongs to the sandbox's monitor: `krunbox stop` stops it, not `exec`.
    fn kill(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    fn pause(&mut self) -> Result<(), BackendError> {
        Err(BackendError::NotTheOwner(
            "only the sandbox's monitor pauses its VM (`krunbox pause`)",
        ))
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        Err(BackendError::NotTheOwner(
            "only the sandbox's monitor resumes its VM (`krunbox resume`)",
        ))
    }
}
