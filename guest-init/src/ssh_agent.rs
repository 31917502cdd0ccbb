//! SSH agent forwarding (`krunbox.ssh_agent=PORT`): a Unix socket in the guest whose every
//! connection is relayed, byte for byte, to a vsock port of the host, where krunbox relays it
//! to the host's `SSH_AUTH_SOCK`.
//!
//! The keys stay in the host's agent, and the host decides what reaches it: its relay
//! forwards only "list your keys" and "sign these bytes" and refuses everything else (remove
//! all, lock, add a key, ...). Filtering here would be useless, as root in the guest can reach
//! the vsock port directly. A guest can use the keys while it runs but never read or change
//! them. Commands find the socket through `SSH_AUTH_SOCK`, which every exec gets by default.
//!
//! A connection ends when either side closes. The guest client's end of file ends it too
//! (rather than half-closing towards the host): vhost-device-vsock does not forward a
//! half-close to the host socket, so the host agent would wait for the next request forever.
//! Agent clients never half-close: they send a request, read the answer, and close.
//!
//! Errors (a host agent that is gone, a reset connection) are logged and end only that
//! connection; the listener stays.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Where the guest's commands reach the host's SSH agent.
pub const SOCKET: &str = "/run/krunbox/ssh-agent.sock";

/// The variable OpenSSH's clients read the agent's socket from.
pub const ENV: &str = "SSH_AUTH_SOCK";

/// Pause after a failed accept, so that a persistent error (out of descriptors) does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why forwarding could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SshAgentError {
    /// Creating the socket's directory, binding it or opening it to every user.
    #[error("cannot {action} {path}: {source}")]
    Socket {
        /// What failed.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Listens on [`SOCKET`] and relays each connection to vsock `port` of the host (CID 2).
/// Must run inside the tokio runtime; returns once the socket is bound.
pub fn start(port: u32) -> Result<(), SshAgentError> {
    let listener = bind(Path::new(SOCKET))?;
    tracing::info!(port, socket = SOCKET, "forwarding the host's SSH agent");
    tokio::spawn(accept(listener, move || {
        tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(
            tokio_vsock::VMADDR_CID_HOST,
            port,
        ))
    }));
    Ok(())
}

/// Binds `path` (replacing a stale socket), usable by every user of the guest: commands run
/// as any uid may use the agent, as they may on a host with a shared `SSH_AUTH_SOCK`.
fn bind(path: &Path) -> Result<UnixListener, SshAgentError> {
    let failed = |action, path: &Path| {
        let path = path.to_owned();
        move |source| SshAgentError::Socket {
            action,
            path,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed("create", dir))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(failed("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(failed("set the mode of", path))?;
    Ok(listener)
}

/// Accepts guest clients forever; each gets its own upstream connection from `connect`.
async fn accept<C, F, S>(listener: UnixListener, connect: C)
where
    C: Fn() -> F,
    F: Future<Output = std::io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let upstream = connect();
                tokio::spawn(async move {
                    match upstream.await {
                        Ok(upstream) => {
                            if let Err(err) = relay(client, upstream).await {
                                tracing::debug!(%err, "SSH agent connection ended with an error");
                            }
                        }
                        Err(err) => {
                            tracing::warn!(%err, "cannot reach the host's SSH agent");
                        }
                    }
                });
            }
            Err(err) => {
                tracing::error!(%err, "accepting an SSH agent client failed; still listening");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Copies both ways until one side closes (see the module docs for why the client's end of
/// file ends the connection). Everything read before an end of file is written on first.
async fn relay<S>(mut client: UnixStream, mut upstream: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = tokio::io::split(&mut upstream);
    tokio::select! {
        sent = tokio::io::copy(&mut client_read, &mut upstream_write) => {
            sent?;
        }
        received = tokio::io::copy(&mut upstream_read, &mut client_write) => {
            received?;
            client_write.shutdown().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// A stand-in for the host's agent: answers each request with "re:" + the request, then
    /// reports whether the connection was closed after it.
    async fn echo_agent(listener: UnixListener) -> Vec<(Vec<u8>, bool)> {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 5];
            stream.read_exact(&mut request).await.unwrap();
            stream.write_all(b"re:").await.unwrap();
            stream.write_all(&request).await.unwrap();
            let mut rest = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
                    .await
                    .is_ok();
            seen.push((request, closed && rest.is_empty()));
        }
        seen
    }

    #[tokio::test]
    async fn relays_each_connection_to_its_own_upstream_and_closes_it() {
        let dir = tempfile::tempdir().unwrap();
        let guest_socket = dir.path().join("run/krunbox/ssh-agent.sock");
        let host_socket = dir.path().join("host-agent.sock");
        let host = tokio::spawn(echo_agent(UnixListener::bind(&host_socket).unwrap()));
        let listener = bind(&guest_socket).unwrap();
        let mode = std::fs::metadata(&guest_socket)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o666, "every guest user may connect");
        let upstream = host_socket.clone();
        tokio::spawn(accept(listener, move || {
            UnixStream::connect(upstream.clone())
        }));

        for request in [b"hello", b"world"] {
            let mut client = UnixStream::connect(&guest_socket).await.unwrap();
            client.write_all(request).await.unwrap();
            let mut answer = vec![0; 8];
            client.read_exact(&mut answer).await.unwrap();
            assert_eq!(answer, [b"re:".as_slice(), request].concat());
        }
        let seen = host.await.unwrap();
        assert_eq!(
            seen,
            [(b"hello".to_vec(), true), (b"world".to_vec(), true)],
            "the upstream connection closes with the client's"
        );
    }

    #[tokio::test]
    async fn the_host_closing_ends_the_clients_stream_and_a_missing_host_only_that_client() {
        let dir = tempfile::tempdir().unwrap();
        let guest_socket = dir.path().join("agent.sock");
        let host_socket = dir.path().join("host.sock");
        let listener = bind(&guest_socket).unwrap();
        let upstream = host_socket.clone();
        tokio::spawn(accept(listener, move || {
            UnixStream::connect(upstream.clone())
        }));

        // No host agent yet: the client's connection is closed, the listener stays.
        let mut client = UnixStream::connect(&guest_socket).await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        let host = UnixListener::bind(&host_socket).unwrap();
        let mut client = UnixStream::connect(&guest_socket).await.unwrap();
        let (mut upstream, _) = host.accept().await.unwrap();
        upstream.write_all(b"bye").await.unwrap();
        drop(upstream);
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
            .await
            .expect("the host's close reaches the client")
            .unwrap();
        assert_eq!(rest, b"bye");
    }
}
