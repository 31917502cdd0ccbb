//! The host's end of SSH agent forwarding (`--ssh`): a Unix socket in the VM's run directory
//! that the VMM connects each guest connection to host vsock port
//! [`krunbox_protocol::SSH_AGENT_VSOCK_PORT`] to, and that relays it to the real
//! `SSH_AUTH_SOCK` through [`krunbox_protocol::ssh_agent`]'s filter: the guest may list the
//! keys and ask for signatures; every other request (remove all keys, lock, add a key,
//! extensions, ...) is answered `SSH_AGENT_FAILURE` here and never reaches the agent. The
//! filter must be on the host: root in the guest can reach the vsock port directly.
//!
//! One implementation for both backends, in the process that lives exactly as long as the VM:
//! the QEMU supervisor (vhost-device-vsock connects to `vm.vsock_1025`) and the libkrun VMM
//! child (`krun_add_vsock_port2(1025, socket, listen = false)`; started before
//! `krun_start_enter` takes the main thread over). Plain threads: the conversation is strictly
//! request, then reply, so each connection is one blocking loop, and neither home has a tokio
//! runtime. At most [`MAX_CONNECTIONS`] guest connections at once, so a guest cannot make the
//! process spawn threads without bound.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use krunbox_protocol::ssh_agent::{decide, take_message, Decision, FrameError, FAILURE_REPLY};
use serde::{Deserialize, Serialize};

/// Guest connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Pause after a failed accept, so that a persistent error (out of descriptors) does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Where the relay listens and where it relays to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshAgentRelay {
    /// The socket the VMM connects guest connections to (in the run directory).
    pub listen: PathBuf,
    /// The host's SSH agent (`SSH_AUTH_SOCK`).
    pub agent: PathBuf,
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Binding the socket, restricting it, or starting its thread.
    #[error("cannot {action} the SSH agent relay {path}: {source}")]
    Setup {
        /// What failed.
        action: &'static str,
        /// The relay's socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why one guest connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("cannot reach the host's SSH agent {path}: {source}")]
    Agent {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("from the guest: {0}")]
    Guest(#[source] FrameError),
    #[error("from the host's agent: {0}")]
    Upstream(#[source] FrameError),
}

impl SshAgentRelay {
    /// Binds [`Self::listen`] (owner only) and serves it on a thread for the rest of the
    /// process's life; returns once the socket exists.
    pub fn start(&self) -> Result<(), RelayError> {
        let failed = |action| {
            let path = self.listen.clone();
            move |source| RelayError::Setup {
                action,
                path,
                source,
            }
        };
        let listener = UnixListener::bind(&self.listen).map_err(failed("bind"))?;
        std::fs::set_permissions(&self.listen, std::fs::Permissions::from_mode(0o600))
            .map_err(failed("restrict"))?;
        let agent = self.agent.clone();
        std::thread::Builder::new()
            .name("ssh-agent-relay".into())
            .spawn(move || accept(&listener, &agent))
            .map_err(failed("start a thread for"))?;
        tracing::info!(socket = %self.listen.display(), agent = %self.agent.display(),
            "relaying the guest's SSH agent requests (list and sign only)");
        Ok(())
    }
}

fn accept(listener: &UnixListener, agent: &Path) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) => {
                tracing::error!(%err, "accepting an SSH agent connection failed; still listening");
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                MAX_CONNECTIONS,
                "too many SSH agent connections; closed one"
            );
            continue;
        }
        let agent = agent.to_owned();
        let active_here = active.clone();
        let spawned = std::thread::Builder::new()
            .name("ssh-agent-conn".into())
            .spawn(move || {
                if let Err(err) = serve(client, &agent) {
                    tracing::warn!(%err, "SSH agent connection closed");
                }
                active_here.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(err) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(%err, "cannot start a thread for an SSH agent connection");
        }
    }
}

/// One guest connection: each request is forwarded (and the agent's reply returned) or
/// refused, until the guest closes. Ends on the first malformed or oversized message.
fn serve(mut client: UnixStream, agent: &Path) -> Result<(), ConnectionError> {
    let mut upstream = UnixStream::connect(agent).map_err(|source| ConnectionError::Agent {
        path: agent.to_owned(),
        source,
    })?;
    let mut from_client = Vec::new();
    let mut from_upstream = Vec::new();
    while let Some(request) =
        read_message(&mut client, &mut from_client).map_err(|e| e.or(ConnectionError::Guest))?
    {
        match decide(&request) {
            Decision::Forward => {
                upstream.write_all(&request)?;
                let Some(reply) = read_message(&mut upstream, &mut from_upstream)
                    .map_err(|e| e.or(ConnectionError::Upstream))?
                else {
                    // The agent closed: so does the guest's connection.
                    return Ok(());
                };
                client.write_all(&reply)?;
            }
            Decision::Refuse { message_type } => {
                tracing::warn!(
                    message_type,
                    "refused a guest's SSH agent request (only list and sign are forwarded)"
                );
                client.write_all(&FAILURE_REPLY)?;
            }
        }
    }
    Ok(())
}

/// A read failure or a framing error.
enum ReadError {
    Io(std::io::Error),
    Frame(FrameError),
}

impl ReadError {
    fn or(self, frame: fn(FrameError) -> ConnectionError) -> ConnectionError {
        match self {
            Self::Io(err) => ConnectionError::Io(err),
            Self::Frame(err) => frame(err),
        }
    }
}

/// The next whole message from `stream` (`buffer` keeps what was read past it); `None` at end
/// of file (a partial message then is dropped: its sender is gone).
fn read_message(
    stream: &mut UnixStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<Vec<u8>>, ReadError> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        if let Some(message) = take_message(buffer).map_err(ReadError::Frame)? {
            return Ok(Some(message));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ReadError::Io(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use krunbox_protocol::ssh_agent::{message_type, MAX_MESSAGE, REQUEST_IDENTITIES};

    use super::*;

    fn message(message_type: u8, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len() + 1).unwrap();
        [&length.to_be_bytes()[..], &[message_type], payload].concat()
    }

    /// A stand-in for the host's agent: answers every message with type 6 (success) and the
    /// request's type as payload; returns the types it was sent, connection by connection.
    fn fake_agent(
        listener: UnixListener,
        connections: usize,
    ) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..connections {
                let (mut stream, _) = listener.accept().unwrap();
                let mut buffer = Vec::new();
                let mut types = Vec::new();
                while let Ok(Some(request)) = read_message(&mut stream, &mut buffer) {
                    let kind = message_type(&request).unwrap();
                    types.push(kind);
                    stream.write_all(&message(6, &[kind])).unwrap();
                }
                seen.push(types);
            }
            seen
        })
    }

    fn relay(dir: &Path) -> SshAgentRelay {
        SshAgentRelay {
            listen: dir.join("relay.sock"),
            agent: dir.join("agent.sock"),
        }
    }

    fn exchange(client: &mut UnixStream, request: &[u8]) -> Vec<u8> {
        client.write_all(request).unwrap();
        let mut buffer = Vec::new();
        match read_message(client, &mut buffer) {
            Ok(Some(reply)) => reply,
            _ => panic!("no reply"),
        }
    }

    #[test]
    fn list_and_sign_reach_the_agent_and_everything_else_is_refused_here() {
        let dir = tempfile::tempdir().unwrap();
        let relay = relay(dir.path());
        let agent = fake_agent(UnixListener::bind(&relay.agent).unwrap(), 1);
        relay.start().unwrap();
        let mode = std::fs::metadata(&relay.listen)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may connect");

        let mut client = UnixStream::connect(&relay.listen).unwrap();
        assert_eq!(
            exchange(&mut client, &message(REQUEST_IDENTITIES, b"")),
            message(6, &[11])
        );
        // Remove all, lock, add identity, add constrained, extension.
        for refused in [19, 22, 17, 25, 27] {
            assert_eq!(
                exchange(&mut client, &message(refused, b"x")),
                FAILURE_REPLY,
                "{refused}"
            );
        }
        // Two requests in one write: both answered, in order.
        let both = [message(13, b"sign me"), message(19, b"")].concat();
        client.write_all(&both).unwrap();
        let mut buffer = Vec::new();
        let first = read_message(&mut client, &mut buffer)
            .ok()
            .flatten()
            .unwrap();
        let second = read_message(&mut client, &mut buffer)
            .ok()
            .flatten()
            .unwrap();
        assert_eq!((first, second), (message(6, &[13]), FAILURE_REPLY.to_vec()));
        drop(client);
        assert_eq!(
            agent.join().unwrap(),
            [vec![11, 13]],
            "the agent saw only list and sign"
        );
    }

    #[test]
    fn an_oversized_request_closes_the_connection_unforwarded() {
        let dir = tempfile::tempdir().unwrap();
        let relay = relay(dir.path());
        let agent = fake_agent(UnixListener::bind(&relay.agent).unwrap(), 1);
        relay.start().unwrap();
        let mut client = UnixStream::connect(&relay.listen).unwrap();
        let length = u32::try_from(MAX_MESSAGE + 1).unwrap();
        // One write: the relay closes as soon as it reads the length, so a
        // second write could meet a closed socket.
        client
            .write_all(&[&length.to_be_bytes()[..], &[13]].concat())
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "closed without a reply");
        assert_eq!(agent.join().unwrap(), [Vec::<u8>::new()]);
    }

    #[test]
    fn a_missing_agent_closes_only_that_connection() {
        let dir = tempfile::tempdir().unwrap();
        let relay = relay(dir.path());
        relay.start().unwrap();
        let mut client = UnixStream::connect(&relay.listen).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());

        let agent = fake_agent(UnixListener::bind(&relay.agent).unwrap(), 1);
        let mut client = UnixStream::connect(&relay.listen).unwrap();
        assert_eq!(exchange(&mut client, &message(11, b"")), message(6, &[11]));
        drop(client);
        assert_eq!(agent.join().unwrap(), [vec![11]]);
    }
}
