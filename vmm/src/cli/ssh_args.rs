//! `--ssh`, shared by `krunbox run` and `krunbox create`: the host's SSH agent in the guest.

use std::path::PathBuf;

/// The variable naming the host's SSH agent socket.
const SSH_AUTH_SOCK: &str = "SSH_AUTH_SOCK";

/// SSH agent forwarding.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SshArgs {
    /// Forward the host's SSH agent ($SSH_AUTH_SOCK) into the guest: commands there find it
    /// at $SSH_AUTH_SOCK (/run/krunbox/ssh-agent.sock) and can use your keys (ssh, git,
    /// `ssh-add -l`) while the VM runs. The keys stay on the host: only agent requests (list
    /// the keys, sign this) and their answers cross into the VM, over vsock; the guest never
    /// sees key material, but can ask the agent to sign for as long as it runs.
    #[arg(long)]
    pub ssh: bool,
}

/// `--ssh` without a usable agent.
#[derive(Debug, thiserror::Error)]
pub enum SshAgentError {
    /// No agent in the environment.
    #[error(
        "--ssh: SSH_AUTH_SOCK is not set; start an agent (eval \"$(ssh-agent)\"; ssh-add) or run without --ssh"
    )]
    NotSet,
    /// The variable names no socket.
    #[error("--ssh: SSH_AUTH_SOCK={path}: {reason}")]
    Unusable {
        /// The variable's value.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
}

impl SshArgs {
    /// The host agent's socket (absolute) with `--ssh`, `None` without.
    pub fn resolve(&self) -> Result<Option<PathBuf>, SshAgentError> {
        if !self.ssh {
            return Ok(None);
        }
        let value = std::env::var_os(SSH_AUTH_SOCK)
            .filter(|v| !v.is_empty())
            .ok_or(SshAgentError::NotSet)?;
        let unusable = |reason: String| SshAgentError::Unusable {
            path: PathBuf::from(&value),
            reason,
        };
        // Absolute: the QEMU backend links to it from the VM's run directory.
        let socket = std::path::absolute(&value).map_err(|e| unusable(e.to_string()))?;
        crate::backend::check_ssh_agent(&socket).map_err(unusable)?;
        Ok(Some(socket))
    }
}
