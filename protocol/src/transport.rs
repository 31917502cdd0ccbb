//! How the host reaches an agent.
//!
//! Every backend ends in a Unix socket on the host:
//! - host mode (`guest-init --listen unix:PATH`) and libkrun (`krun_add_vsock_port2` with
//!   `listen = true`) give a socket that is the agent's stream once connected: [`AgentAddress::Unix`];
//! - `vhost-device-vsock` (the QEMU backend) gives a *hybrid vsock* socket: the host writes
//!   `CONNECT <port>\n`, reads `OK <n>\n`, and the stream is raw from then on
//!   (the Firecracker convention): [`AgentAddress::HybridVsock`].
//!
//! Both end as a [`UnixStream`], so the client is written once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Where the agent of one sandbox listens.
///
/// ```
/// use krunbox_protocol::transport::AgentAddress;
/// let addr: AgentAddress = "unix:/run/agent.sock".parse().unwrap();
/// assert_eq!(addr, AgentAddress::Unix("/run/agent.sock".into()));
/// let vsock: AgentAddress = "hybrid-vsock:/run/vm.vsock:1024".parse().unwrap();
/// assert_eq!(vsock.to_string(), "hybrid-vsock:/run/vm.vsock:1024");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddress {
    /// A Unix socket that is the agent's stream.
    Unix(PathBuf),
    /// A hybrid-vsock multiplexer socket and the guest port the agent listens on.
    HybridVsock {
        /// The multiplexer's socket.
        uds: PathBuf,
        /// The guest vsock port.
        port: u32,
    },
}

/// Why connecting to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be connected.
    #[error("cannot connect to {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The hybrid-vsock multiplexer refused or dropped the `CONNECT` (nobody listens on the
    /// port yet, typically while the guest boots).
    #[error("vsock port {port} behind {path} refused the connection: {detail}")]
    Refused {
        /// The multiplexer socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
        /// What the multiplexer said.
        detail: String,
    },
    /// The agent did not come up in time.
    #[error("agent at {address} did not answer within {waited:?}; last error: {last}")]
    Timeout {
        /// Where it was tried.
        address: AgentAddress,
        /// How long.
        waited: Duration,
        /// The last attempt's error.
        last: String,
    },
}

/// A malformed address string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agent address {0:?}: expected unix:PATH or hybrid-vsock:PATH:PORT")]
pub struct InvalidAddress(pub String);

impl std::str::FromStr for AgentAddress {
    type Err = InvalidAddress;

    fn from_str(s: &str) -> Result<Self, InvalidAddress> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(InvalidAddress(s.into()));
            }
            return Ok(Self::Unix(path.into()));
        }
        if let Some(rest) = s.strip_prefix("hybrid-vsock:") {
            let (path, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| InvalidAddress(s.into()))?;
            let port = port.parse().map_err(|_| InvalidAddress(s.into()))?;
            if path.is_empty() {
                return Err(InvalidAddress(s.into()));
            }
            return Ok(Self::HybridVsock {
                uds: path.into(),
                port,
            });
        }
        Err(InvalidAddress(s.into()))
    }
}

impl std::fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::HybridVsock { uds, port } => write!(f, "hybrid-vsock:{}:{port}", uds.display()),
        }
    }
}

impl AgentAddress {
    /// Connects once.
    pub async fn connect(&self) -> Result<UnixStream, ConnectError> {
        match self {
            Self::Unix(path) => connect_unix(path).await,
            Self::HybridVsock { uds, port } => {
                let mut stream = connect_unix(uds).await?;
                hybrid_vsock_connect(&mut stream, uds, *port).await?;
                Ok(stream)
            }
        }
    }
}

async fn connect_unix(path: &Path) -> Result<UnixStream, ConnectError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ConnectError::Socket {
            path: path.to_owned(),
            source,
        })?;
    widen_send_buffer(&stream);
    Ok(stream)
}

/// How many bytes a connection's sender may have on their way: four chunks, the 1 MiB window
/// of one stream. Linux's default for a Unix socket (`net.core.wmem_default`, 208 KiB) is less
/// than one [`MAX_CHUNK_LEN`](crate::frame::MAX_CHUNK_LEN) chunk, so every chunk stalled its
/// writer until the reader had taken part of it.
pub const SEND_BUFFER: usize = 4 * crate::frame::MAX_CHUNK_LEN;

/// Raises `socket`'s send buffer to [`SEND_BUFFER`]. The kernel caps the request at
/// `net.core.wmem_max`, itself 208 KiB on a stock Linux (which then gives twice that, about
/// 416 KiB); a socket that refuses keeps its default, slower but correct. A guest's vsock
/// connections are not Unix sockets and keep their own buffer.
pub fn widen_send_buffer(socket: &impl std::os::fd::AsFd) {
    if let Err(err) = socket2::SockRef::from(socket).set_send_buffer_size(SEND_BUFFER) {
        tracing::debug!(%err, "the connection keeps its default send buffer");
    }
}

/// The longest reply line the multiplexer may send (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY_LINE: usize = 64;

async fn hybrid_vsock_connect(
    stream: &mut UnixStream,
    path: &Path,
    port: u32,
) -> Result<(), ConnectError> {
    let refused = |detail: String| ConnectError::Refused {
        path: path.to_owned(),
        port,
        detail,
    };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| refused(e.to_string()))?;
    // Read byte by byte: anything after the newline already belongs to the agent's stream.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = stream
            .read(&mut byte)
            .await
            .map_err(|e| refused(e.to_string()))?;
        if n == 0 {
            return Err(refused("closed before answering".into()));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY_LINE {
            return Err(refused("reply line too long".into()));
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line.starts_with("OK ") {
        Ok(())
    } else {
        Err(refused(format!("unexpected reply {line:?}")))
    }
}
