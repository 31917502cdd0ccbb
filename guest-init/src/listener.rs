//! Accepting host connections (vsock in a guest, a Unix socket in host mode) and running the
//! agent until a shutdown is requested.
//!
//! Only the host may talk to the agent: the protocol has no authentication (whoever connects
//! may exec as root), so a vsock connection whose peer is not the host's CID
//! ([`VMADDR_CID_HOST`], 2) is logged and closed before a byte is read. Both backends connect
//! from CID 2: vhost-device-vsock makes a host-initiated connection with `VSOCK_HOST_CID` as
//! its local CID (`VsockConnection::new_local_init` in `vhu_vsock_thread.rs`), and libkrun's
//! muxer sends its `OP_REQUEST` with `set_src_cid(VSOCK_HOST_CID)` (`muxer_rxq.rs`). A guest
//! process could otherwise reach the agent through the loopback transport (CID 1) or its own
//! CID; krunbox's kernel has no loopback transport, but the check does not rely on the kernel.
//! Host mode (a Unix socket) relies on the socket's file permissions instead.
//!
//! Accept errors never stop the agent: an `EMFILE` or an aborted connection is transient, and
//! a guest whose listener died could only be powered off. Only failing to bind is fatal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio_vsock::VMADDR_CID_HOST;

use crate::agent::Agent;
use crate::reaper::{self, ProcessTable};
use crate::{server, signals, ssh_agent};

/// Pause after a failed accept, so that a persistent error (out of descriptors) does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket at this path (host mode); a stale socket file there is replaced.
    Unix(PathBuf),
    /// This vsock port, any CID.
    Vsock(u32),
}

/// Why the agent could not serve at all.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot watch for child exits: {0}")]
    Reaper(#[source] std::io::Error),
    #[error("cannot listen on {listen:?}: {source}")]
    Bind {
        listen: Listen,
        #[source]
        source: std::io::Error,
    },
}

/// What every exec gets unless its request says otherwise.
#[derive(Debug, Default)]
pub struct ExecDefaults {
    /// Forward the host's SSH agent from this vsock port (a failure to set it up is logged;
    /// the agent serves without it).
    pub ssh_agent_port: Option<u32>,
    /// A CA bundle to trust ([`krunbox_protocol::boot::CA_BUNDLE_ENV`]).
    pub ca_bundle: Option<std::path::PathBuf>,
    /// Secrets' names, each set to its placeholder.
    pub secrets: Vec<String>,
}

/// Serves until a shutdown is requested; returns the status to report. As `pid1`, termination
/// signals are only forwarded; in host mode a SIGTERM/SIGINT with nothing running stops it.
pub async fn serve(listen: Listen, pid1: bool, defaults: &ExecDefaults) -> Result<i32, ServeError> {
    let table = Arc::new(ProcessTable::default());
    reaper::start(table.clone()).map_err(ServeError::Reaper)?;
    let mut default_env: Vec<(String, String)> = defaults
        .ca_bundle
        .iter()
        .flat_map(|bundle| {
            krunbox_protocol::boot::CA_BUNDLE_ENV
                .iter()
                .map(|key| ((*key).to_owned(), bundle.display().to_string()))
        })
        .collect();
    let forced = defaults
        .secrets
        .iter()
        .map(|name| {
            (
                name.clone(),
                krunbox_protocol::boot::secret_placeholder(name),
            )
        })
        .collect();
    if let Some(port) = defaults.ssh_agent_port {
        match ssh_agent::start(port) {
            Ok(()) => default_env.push((ssh_agent::ENV.into(), ssh_agent::SOCKET.into())),
            Err(err) => tracing::error!(%err, "SSH agent forwarding is off"),
        }
    }
    let default_env = crate::agent::DefaultEnv {
        fill: default_env,
        force: forced,
    };
    let (agent, mut shutdown) = Agent::new(table.clone(), default_env);
    signals::forward(&agent, pid1);
    match listen.clone() {
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path)
                .map_err(|source| ServeError::Bind { listen, source })?;
            tracing::info!(path = %path.display(), "agent listening");
            tokio::spawn(accept_unix(agent, listener));
        }
        Listen::Vsock(port) => {
            let address = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
            let listener = tokio_vsock::VsockListener::bind(address)
                .map_err(|source| ServeError::Bind { listen, source })?;
            tracing::info!(port, "agent listening on vsock");
            // Whatever the log level: the host waits for this line before it connects.
            eprintln!("{}", krunbox_protocol::AGENT_READY_LINE);
            tokio::spawn(accept_vsock(agent, listener));
        }
    }
    // The agent holds the sender, so the channel never closes while we wait.
    let status = shutdown.recv().await.unwrap_or(0);
    table.signal_all(Signal::SIGKILL);
    Ok(status)
}

async fn accept_unix(agent: Arc<Agent>, listener: tokio::net::UnixListener) {
    let mut accepted = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                krunbox_protocol::transport::widen_send_buffer(&stream);
                accepted += 1;
                let peer = format!("unix#{accepted}");
                tokio::spawn(server::serve_connection(agent.clone(), stream, peer));
            }
            Err(err) => accept_failed(&err).await,
        }
    }
}

async fn accept_vsock(agent: Arc<Agent>, listener: tokio_vsock::VsockListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if !from_host(peer.cid()) {
                    tracing::warn!(
                        cid = peer.cid(),
                        port = peer.port(),
                        "refused an agent connection that is not from the host"
                    );
                    drop(stream);
                    continue;
                }
                let peer = format!("vsock {}:{}", peer.cid(), peer.port());
                tokio::spawn(server::serve_connection(agent.clone(), stream, peer));
            }
            Err(err) => accept_failed(&err).await,
        }
    }
}

/// Whether a vsock peer may use the agent: the host, and nothing in the guest (CID 1 is the
/// loopback transport, the guest's own CID its other processes).
fn from_host(peer_cid: u32) -> bool {
    peer_cid == VMADDR_CID_HOST
}

async fn accept_failed(err: &std::io::Error) {
    tracing::error!(%err, "accepting a connection failed; still listening");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_cid_may_connect() {
        assert!(from_host(2));
        for cid in [0, 1, 3, 4, tokio_vsock::VMADDR_CID_ANY] {
            assert!(!from_host(cid), "CID {cid}");
        }
    }
}
