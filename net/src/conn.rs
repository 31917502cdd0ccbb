//! One guest TCP socket paired with a host connection: the bytes between them, in bounded
//! chunks through bounded channels, and the time they last moved.
//!
//! Bounded in bytes: each direction's channel holds at most [`CHANNEL_CHUNKS`] chunks of at
//! most [`CHUNK`] bytes (the host reader reads into a `CHUNK` buffer; the guest side takes at
//! most `CHUNK` from smoltcp per chunk), plus one partly sent chunk: [`MAX_BUFFERED`] bytes
//! per direction besides smoltcp's own [`TCP_BUFFER`].

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes};
use smoltcp::socket::tcp;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::inspect::Flow;

/// Bytes each guest TCP socket buffers per direction (smoltcp's buffers).
pub const TCP_BUFFER: usize = 256 * 1024;
/// Bytes moved per chunk between a guest socket and its host connection, at most.
pub const CHUNK: usize = 32 * 1024;
/// Chunks each direction's channel holds.
pub const CHANNEL_CHUNKS: usize = 4;
/// Bytes buffered per direction outside smoltcp, at most.
pub const MAX_BUFFERED: usize = (CHANNEL_CHUNKS + 1) * CHUNK;

/// A guest TCP socket's host side.
pub struct Conn {
    /// What the log calls it.
    pub label: String,
    /// The guest's flow; `None` for a published port's inbound connection.
    pub flow: Option<Flow>,
    to_host: Option<mpsc::Sender<Bytes>>,
    from_host: mpsc::Receiver<Bytes>,
    unsent: Bytes,
    host_done: bool,
    closing: bool,
    /// When the gateway paired the sockets.
    pub created: Instant,
    /// When a byte last moved either way.
    pub last_activity: Instant,
}

impl Conn {
    /// Pairs a guest socket with `stream`: starts the task that copies the host side.
    pub fn attach(stream: TcpStream, label: String, flow: Option<Flow>, wake: Arc<Notify>) -> Self {
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        Self::attach_halves(read_half, write_half, label, flow, wake)
    }

    /// Pairs a guest socket with the gateway's own end of an in-process stream (the
    /// interception of secrets, the CA service).
    pub fn attach_local(
        stream: DuplexStream,
        label: String,
        flow: Option<Flow>,
        wake: Arc<Notify>,
    ) -> Self {
        let (read_half, write_half) = tokio::io::split(stream);
        Self::attach_halves(read_half, write_half, label, flow, wake)
    }

    fn attach_halves<R, W>(
        read_half: R,
        write_half: W,
        label: String,
        flow: Option<Flow>,
        wake: Arc<Notify>,
    ) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (to_host_tx, to_host_rx) = mpsc::channel(CHANNEL_CHUNKS);
        let (from_host_tx, from_host_rx) = mpsc::channel(CHANNEL_CHUNKS);
        tokio::spawn(copy_host_side(
            read_half,
            write_half,
            to_host_rx,
            from_host_tx,
            wake,
        ));
        let now = Instant::now();
        Self {
            label,
            flow,
            to_host: Some(to_host_tx),
            from_host: from_host_rx,
            unsent: Bytes::new(),
            host_done: false,
            closing: false,
            created: now,
            last_activity: now,
        }
    }

    /// Records that the gateway reset this connection, and why.
    pub fn record_reset(&self, why: &str) {
        use crate::audit::{record, Verdict};
        match &self.flow {
            Some(flow) => record(
                "tcp",
                flow.guest,
                host_side(flow.dest),
                &[],
                Verdict::Reset,
                why,
            ),
            None => record("published", "-", &self.label, &[], Verdict::Reset, why),
        }
    }

    /// Moves what can move between `socket` and the host side; notes the time if any did.
    pub fn pump(&mut self, socket: &mut tcp::Socket) {
        let moved = self.guest_to_host(socket) + self.host_to_guest(socket);
        if moved > 0 {
            self.last_activity = Instant::now();
        }
    }

    fn guest_to_host(&mut self, socket: &mut tcp::Socket) -> usize {
        let Some(to_host) = &self.to_host else {
            return 0;
        };
        let mut moved = 0;
        while socket.can_recv() {
            let permit = match to_host.try_reserve() {
                Ok(permit) => permit,
                Err(TrySendError::Full(())) => return moved,
                Err(TrySendError::Closed(())) => {
                    debug!("{}: the host side failed; resetting", self.label);
                    socket.abort();
                    return moved;
                }
            };
            match socket.recv(|data| {
                let n = data.len().min(CHUNK);
                (n, Bytes::copy_from_slice(&data[..n]))
            }) {
                Ok(chunk) if !chunk.is_empty() => {
                    moved += chunk.len();
                    permit.send(chunk);
                }
                _ => break,
            }
        }
        let guest_finished = matches!(
            socket.state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
                | tcp::State::Closed
        );
        if guest_finished && !socket.can_recv() {
            // Dropping the sender shuts down the host connection's write side.
            self.to_host = None;
        }
        moved
    }

    fn host_to_guest(&mut self, socket: &mut tcp::Socket) -> usize {
        if !socket.may_send() {
            return 0;
        }
        let mut moved = 0;
        loop {
            if self.unsent.is_empty() {
                match self.from_host.try_recv() {
                    Ok(chunk) => self.unsent = chunk,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.host_done = true;
                        break;
                    }
                }
            }
            match socket.send_slice(&self.unsent) {
                Ok(n) => {
                    moved += n;
                    self.unsent.advance(n);
                }
                Err(_) => break,
            }
            if !self.unsent.is_empty() {
                break;
            }
        }
        if self.host_done && self.unsent.is_empty() && !self.closing {
            socket.close();
            self.closing = true;
        }
        moved
    }
}

/// A guest socket with [`TCP_BUFFER`] bytes each way.
pub fn new_tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    )
}

/// The host side of a destination as the guest addressed it: the gateway is the host's
/// loopback.
pub fn host_side(dest: SocketAddrV4) -> SocketAddrV4 {
    if *dest.ip() == crate::config::GATEWAY_IP {
        SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, dest.port())
    } else {
        dest
    }
}

/// Copies between a host connection and its guest socket's channels until both directions
/// are done or the gateway drops the connection.
async fn copy_host_side<R, W>(
    mut read_half: R,
    mut write_half: W,
    mut to_host: mpsc::Receiver<Bytes>,
    from_host: mpsc::Sender<Bytes>,
    wake: Arc<Notify>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let reader = async {
        let mut buffer = vec![0; CHUNK];
        loop {
            tokio::select! {
                _ = from_host.closed() => break,
                read = read_half.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if from_host.send(Bytes::copy_from_slice(&buffer[..n])).await.is_err() {
                            break;
                        }
                        wake.notify_one();
                    }
                },
            }
        }
        drop(from_host);
        wake.notify_one();
    };
    let writer = async {
        while let Some(chunk) = to_host.recv().await {
            if write_half.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = write_half.shutdown().await;
        // Wake the gateway: a failed write closed the channel it sends on.
        drop(to_host);
        wake.notify_one();
    };
    tokio::join!(reader, writer);
}
