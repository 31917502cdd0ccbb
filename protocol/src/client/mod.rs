//! The async client: one connection to one agent, many concurrent operations over it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), krunbox_protocol::client::ClientError> {
//! use krunbox_protocol::client::{Client, ExecSpec};
//! use krunbox_protocol::transport::AgentAddress;
//!
//! let client = Client::connect(&AgentAddress::Unix("/tmp/agent.sock".into())).await?;
//! let output = client.exec(ExecSpec::new(["uname", "-a"])).await?.collect().await?;
//! println!("{}", String::from_utf8_lossy(&output.stdout));
//! assert_eq!(output.status.shell_code(), 0);
//! # Ok(()) }
//! ```
//!
//! Inside, a reader task routes every incoming frame by its envelope id to the operation that
//! owns it, and a writer task serialises outgoing frames. Per-operation credit windows
//! ([`crate::flow`]) keep one slow consumer from stalling the others.

mod error;
mod exec;
mod files;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use error::ClientError;
pub use exec::{ExecControl, ExecEvent, ExecOutput, ExecSpec, ExecStdin, Execution, OutputReader};
pub use files::RemotePath;

use crate::flow::{RecvWindow, SendWindow, INITIAL_WINDOW};
use crate::frame::{FrameReader, FrameWriter};
use crate::generation::{self, SUPPORTED};
use crate::messages::{
    Body, Envelope, ErrorKind, ErrorReply, Hello, HelloAck, Ping, ShutdownRequest,
};
use crate::transport::{AgentAddress, ConnectError};

/// Frames queued for the writer task before senders wait.
const OUTGOING_QUEUE: usize = 256;

/// A connected, handshaken client. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    hello: HelloAck,
}

struct Operation {
    frames: mpsc::UnboundedSender<Body>,
    send_window: Option<Arc<SendWindow>>,
    /// Accounts incoming payload at arrival, so a peer ignoring its window cannot make the
    /// client buffer without bound.
    recv_window: Option<Arc<Mutex<RecvWindow>>>,
}

struct Shared {
    outgoing: mpsc::Sender<Envelope>,
    operations: Mutex<HashMap<u64, Operation>>,
    next_id: AtomicU64,
}

impl Shared {
    fn operations(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Operation>> {
        self.operations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new operation and returns its id and frame receiver.
    fn open(
        &self,
        send_window: Option<Arc<SendWindow>>,
        recv_window: Option<Arc<Mutex<RecvWindow>>>,
    ) -> (u64, mpsc::UnboundedReceiver<Body>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (frames, rx) = mpsc::unbounded_channel();
        self.operations().insert(
            id,
            Operation {
                frames,
                send_window,
                recv_window,
            },
        );
        (id, rx)
    }

    fn close(&self, id: u64) {
        if let Some(op) = self.operations().remove(&id) {
            if let Some(window) = op.send_window {
                window.close();
            }
        }
    }

    async fn send(&self, id: u64, body: Body, operation: &'static str) -> Result<(), ClientError> {
        self.outgoing
            .send(Envelope::new(id, body))
            .await
            .map_err(|_| ClientError::ConnectionClosed { operation })
    }

    fn route(&self, frame: Envelope) {
        let Some(body) = frame.body else {
            tracing::warn!(
                id = frame.id,
                "agent sent a frame with an unknown body; ignored"
            );
            return;
        };
        let mut operations = self.operations();
        let Some(op) = operations.get(&frame.id) else {
            tracing::debug!(
                id = frame.id,
                kind = body.kind(),
                "frame for a finished operation"
            );
            return;
        };
        if let Body::Window(update) = &body {
            if let Some(window) = &op.send_window {
                window.grant(update.bytes);
            }
            return;
        }
        if let (Some(window), Some(payload)) = (&op.recv_window, payload_len(&body)) {
            let overrun = window
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .received(payload);
            if let Err(overrun) = overrun {
                tracing::warn!(id = frame.id, %overrun, "agent ignored flow control; operation aborted");
                let reply = ErrorReply::new(ErrorKind::ProtocolViolation, overrun.to_string());
                let _ = op.frames.send(Body::Error(reply));
                operations.remove(&frame.id);
                return;
            }
        }
        if op.frames.send(body).is_err() {
            // The receiver was dropped: nobody waits for this operation any more.
            operations.remove(&frame.id);
        }
    }

    fn fail_all(&self) {
        for (_, op) in self.operations().drain() {
            if let Some(window) = op.send_window {
                window.close();
            }
        }
    }
}

/// The flow-controlled payload size of a data frame.
/// The payload of a flow-controlled data frame; `None` for every other frame.
fn payload_len(body: &Body) -> Option<usize> {
    match body {
        Body::Output(chunk) => Some(chunk.data.len()),
        Body::FileChunk(chunk) => Some(chunk.data.len()),
        _ => None,
    }
}

/// A round trip on `shared`'s connection; returns the agent's uptime.
async fn ping(shared: &Arc<Shared>) -> Result<Duration, ClientError> {
    let (id, mut rx) = shared.open(None, None);
    let _guard = OperationGuard {
        shared: shared.clone(),
        id,
    };
    let nonce = id ^ 0x5eed;
    shared.send(id, Body::Ping(Ping { nonce }), "ping").await?;
    match rx.recv().await {
        Some(Body::Pong(pong)) if pong.nonce == nonce => Ok(Duration::from_millis(pong.uptime_ms)),
        Some(other) => Err(unexpected("ping", &other)),
        None => Err(ClientError::ConnectionClosed { operation: "ping" }),
    }
}

/// Keeps an operation registered until dropped.
struct OperationGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for OperationGuard {
    fn drop(&mut self) {
        self.shared.close(self.id);
    }
}

/// How long the first connection attempt of [`Client::connect_with_retry`] waits for the
/// handshake's answer.
pub const FIRST_ATTEMPT_LIMIT: Duration = Duration::from_secs(2);
/// The most one attempt waits (an agent in a nested, emulated VM answers slowly).
pub const LAST_ATTEMPT_LIMIT: Duration = Duration::from_secs(16);
/// The longest pause between two attempts: how late, at most, a booting guest's agent is
/// seen (an attempt on a socket nobody answers yet costs microseconds).
pub const RETRY_DELAY_MAX: Duration = Duration::from_millis(50);

impl Client {
    /// Connects to the agent at `address` and performs the handshake.
    pub async fn connect(address: &AgentAddress) -> Result<Self, ClientError> {
        let stream = address.connect().await?;
        Self::handshake(stream).await
    }

    /// Connects, retrying until the agent answers the handshake or `timeout` passes; for
    /// a guest that is still booting.
    ///
    /// Each attempt has its own limit, which grows from [`FIRST_ATTEMPT_LIMIT`] to
    /// [`LAST_ATTEMPT_LIMIT`]: a VMM may accept a connection and never answer on it (a vsock
    /// device that lost a request sent while the guest's driver started), and one such
    /// attempt must not use up the whole wait.
    pub async fn connect_with_retry(
        address: &AgentAddress,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(10);
        let mut attempt_limit = FIRST_ATTEMPT_LIMIT;
        loop {
            let attempt = async {
                let stream = address.connect().await?;
                Self::handshake(stream).await
            };
            let remaining = timeout.saturating_sub(started.elapsed());
            let limit = attempt_limit.min(remaining);
            let last = match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(client)) => return Ok(client),
                // The agent answered and refused (an older agent says it speaks no common
                // generation this way): asking again cannot change its mind.
                Ok(Err(err @ (ClientError::Generation(_) | ClientError::Remote { .. }))) => {
                    return Err(err)
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => {
                    attempt_limit = (attempt_limit * 2).min(LAST_ATTEMPT_LIMIT);
                    format!("no answer to the handshake within {limit:?}")
                }
            };
            if started.elapsed() + delay >= timeout {
                return Err(ConnectError::Timeout {
                    address: address.clone(),
                    waited: started.elapsed(),
                    last,
                }
                .into());
            }
            tracing::trace!(%address, %last, "agent not ready yet");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_DELAY_MAX);
        }
    }

    /// Performs the handshake over an already connected byte stream (any transport).
    pub async fn handshake<S>(stream: S) -> Result<Self, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(stream);
        let mut reader = FrameReader::new(read_half);
        let mut writer = FrameWriter::new(write_half);
        let hello = Hello {
            min_generation: *SUPPORTED.start(),
            max_generation: *SUPPORTED.end(),
            peer: concat!("krunbox-protocol ", env!("CARGO_PKG_VERSION")).into(),
        };
        writer.send(Envelope::new(0, Body::Hello(hello))).await?;
        let ack = match reader.next().await {
            Some(Ok(Envelope {
                body: Some(Body::HelloAck(ack)),
                ..
            })) => ack,
            Some(Ok(Envelope {
                body: Some(Body::Error(reply)),
                ..
            })) => {
                return Err(ClientError::Remote {
                    operation: "handshake",
                    reply,
                })
            }
            Some(Ok(other)) => {
                return Err(ClientError::UnexpectedFrame {
                    operation: "handshake",
                    got: other.kind(),
                })
            }
            Some(Err(err)) => return Err(err.into()),
            None => {
                return Err(ClientError::ConnectionClosed {
                    operation: "handshake",
                })
            }
        };
        generation::negotiate(SUPPORTED, ack.generation..=ack.generation)?;

        let (outgoing, mut queue) = mpsc::channel::<Envelope>(OUTGOING_QUEUE);
        let shared = Arc::new(Shared {
            outgoing,
            operations: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(async move {
            while let Some(frame) = queue.recv().await {
                // Written together: every frame already queued, then one flush.
                let mut sent = writer.feed(frame).await;
                if sent.is_ok() && queue.is_empty() {
                    sent = writer.flush().await;
                }
                if let Err(err) = sent {
                    tracing::debug!(%err, "agent connection write failed");
                    break;
                }
            }
        });
        let routing = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while let Some(frame) = reader.next().await {
                let Some(shared) = routing.upgrade() else {
                    return;
                };
                match frame {
                    Ok(frame) => shared.route(frame),
                    Err(err) => {
                        tracing::warn!(%err, "agent connection read failed");
                        break;
                    }
                }
            }
            if let Some(shared) = routing.upgrade() {
                shared.fail_all();
            }
        });
        Ok(Self { shared, hello: ack })
    }

    /// What the agent said in the handshake (generation, version, features).
    pub fn agent_info(&self) -> &HelloAck {
        &self.hello
    }

    /// Refuses a request the agent would not honour: an agent ignores the fields it does not
    /// know, so what it cannot do must be refused here, not dropped there.
    fn require(&self, feature: &'static str, what: &'static str) -> Result<(), ClientError> {
        if self.hello.features.iter().any(|f| f == feature) {
            return Ok(());
        }
        Err(ClientError::MissingFeature {
            feature,
            what,
            agent_version: self.hello.agent_version.clone(),
        })
    }

    fn open(
        &self,
        send_window: bool,
        recv_window: Option<Arc<Mutex<RecvWindow>>>,
    ) -> (
        OperationGuard,
        mpsc::UnboundedReceiver<Body>,
        Option<Arc<SendWindow>>,
    ) {
        let window = send_window.then(|| Arc::new(SendWindow::new(INITIAL_WINDOW)));
        let (id, rx) = self.shared.open(window.clone(), recv_window);
        (
            OperationGuard {
                shared: self.shared.clone(),
                id,
            },
            rx,
            window,
        )
    }

    /// Round trip to the agent; returns the agent's uptime.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        ping(&self.shared).await
    }

    /// Asks the agent to sync and power the guest off (in host mode: to exit). Returns once the
    /// agent acknowledged; the connection closes right after.
    pub async fn shutdown(&self, exit_code: i32) -> Result<(), ClientError> {
        let (guard, mut rx, _) = self.open(false, None);
        self.shared
            .send(
                guard.id,
                Body::Shutdown(ShutdownRequest { exit_code }),
                "shutdown",
            )
            .await?;
        match rx.recv().await {
            Some(Body::ShutdownAck(_)) => Ok(()),
            Some(other) => Err(unexpected("shutdown", &other)),
            None => Err(ClientError::ConnectionClosed {
                operation: "shutdown",
            }),
        }
    }
}

/// The error for a frame that should not have arrived; an agent `Error` becomes `Remote`.
fn unexpected(operation: &'static str, body: &Body) -> ClientError {
    match body {
        Body::Error(reply) => ClientError::Remote {
            operation,
            reply: reply.clone(),
        },
        other => ClientError::UnexpectedFrame {
            operation,
            got: other.kind(),
        },
    }
}
