//! Serving connections: the handshake, then routing frames to operations by envelope id.
//!
//! A malformed or oversized frame closes that connection (logged with the peer and the
//! decoding error); the agent keeps serving every other connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use krunbox_protocol::frame::{FrameReader, FrameWriter};
use krunbox_protocol::generation::{self, SUPPORTED};
use krunbox_protocol::messages::{
    Body, Envelope, ErrorKind, ErrorReply, HelloAck, Pong, ShutdownAck,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::outgoing::{Outgoing, Reply};
use crate::{exec, files};

/// Frames queued per connection before operations wait for the writer.
const OUTGOING_QUEUE: usize = 256;

/// Operations in flight on one connection: id → their inbox.
type Operations = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Body>>>>;

fn lock(ops: &Operations) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<Body>>> {
    ops.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves one connection until the peer closes it or breaks the protocol.
pub async fn serve_connection<S>(agent: Arc<Agent>, stream: S, peer: String)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read_half);
    let mut writer = FrameWriter::new(write_half);

    let hello = match reader.next().await {
        Some(Ok(Envelope {
            body: Some(Body::Hello(hello)),
            ..
        })) => hello,
        Some(Ok(other)) => {
            tracing::warn!(%peer, kind = other.kind(), "connection did not start with Hello; closed");
            return;
        }
        Some(Err(err)) => {
            tracing::error!(%peer, %err, "bad frame during handshake; connection closed");
            return;
        }
        None => return,
    };
    let generation =
        match generation::negotiate(hello.min_generation..=hello.max_generation, SUPPORTED) {
            Ok(generation) => generation,
            Err(err) => {
                tracing::warn!(%peer, %err, "handshake refused");
                let _ = writer
                    .send(Envelope::new(
                        0,
                        Body::Error(ErrorReply::new(ErrorKind::Unsupported, err.to_string())),
                    ))
                    .await;
                return;
            }
        };
    let ack = HelloAck {
        generation,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        features: vec![
            "exec".into(),
            "pty".into(),
            "files".into(),
            krunbox_protocol::rlimit::AGENT_FEATURE.into(),
            krunbox_protocol::capability::AGENT_FEATURE.into(),
            krunbox_protocol::messages::GROUPS_FEATURE.into(),
        ],
        init_started_ms: crate::agent::init_started_ms(),
        uptime_ms: crate::agent::boot_clock_ms(),
    };
    if writer
        .send(Envelope::new(0, Body::HelloAck(ack)))
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!(%peer, generation, host = %hello.peer, "connection ready");

    let (tx, mut queue) = mpsc::channel::<Outgoing>(OUTGOING_QUEUE);
    let writer_agent = agent.clone();
    let writer_task = tokio::spawn(async move {
        while let Some(outgoing) = queue.recv().await {
            // Written together: every frame already queued, then one flush.
            let mut sent = writer.feed(outgoing.frame).await;
            if sent.is_ok() && (outgoing.then_shutdown.is_some() || queue.is_empty()) {
                sent = writer.flush().await;
            }
            if let Some(status) = outgoing.then_shutdown {
                writer_agent.request_shutdown(status);
            }
            if sent.is_err() {
                break;
            }
        }
    });

    let operations: Operations = Arc::default();
    while let Some(frame) = reader.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => {
                tracing::error!(%peer, %err, "malformed frame; connection closed");
                break;
            }
        };
        dispatch(&agent, &operations, &tx, frame).await;
    }
    // Dropping the inboxes tells running operations the host went away.
    lock(&operations).clear();
    drop(tx);
    let _ = writer_task.await;
}

async fn dispatch(
    agent: &Arc<Agent>,
    operations: &Operations,
    tx: &mpsc::Sender<Outgoing>,
    frame: Envelope,
) {
    let id = frame.id;
    let reply = Reply::new(tx.clone(), id);
    let Some(body) = frame.body else {
        reply
            .send(Body::Error(ErrorReply::new(
                ErrorKind::Unsupported,
                "unknown frame body",
            )))
            .await;
        return;
    };
    match body {
        Body::Ping(ping) => {
            let uptime_ms = u64::try_from(agent.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            reply
                .send(Body::Pong(Pong {
                    nonce: ping.nonce,
                    uptime_ms,
                }))
                .await;
        }
        Body::Shutdown(request) => {
            tracing::info!(status = request.exit_code, "shutdown requested by the host");
            reply
                .send_then_shutdown(Body::ShutdownAck(ShutdownAck {}), request.exit_code)
                .await;
        }
        Body::Exec(request) => {
            if let Some(inbox) = open(operations, &reply, id).await {
                let agent = agent.clone();
                run_operation(operations, id, exec::run(agent, reply, request, inbox));
            }
        }
        Body::File(request) => {
            if let Some(inbox) = open(operations, &reply, id).await {
                run_operation(operations, id, files::run(reply, request, inbox));
            }
        }
        body @ (Body::StdinData(_)
        | Body::StdinClose(_)
        | Body::Resize(_)
        | Body::Signal(_)
        | Body::Window(_)
        | Body::FileChunk(_)) => {
            let (kind, credit) = (body.kind(), matches!(body, Body::Window(_)));
            // By value: a payload held here too could not go back to the chunk pool.
            let delivered = lock(operations)
                .get(&id)
                .is_some_and(|inbox| inbox.send(body).is_ok());
            // Credit for an operation that just ended is harmless; anything else is a host bug.
            if !delivered && !credit {
                let message = format!("no operation {id} for a {kind} frame");
                reply
                    .send(Body::Error(ErrorReply::new(
                        ErrorKind::UnknownOperation,
                        message,
                    )))
                    .await;
            }
        }
        other => {
            let message = format!("the agent does not accept {} frames", other.kind());
            reply
                .send(Body::Error(ErrorReply::new(
                    ErrorKind::Unsupported,
                    message,
                )))
                .await;
        }
    }
}

/// Runs an operation's task and unregisters its id when the task ends.
fn run_operation(
    operations: &Operations,
    id: u64,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let operations = operations.clone();
    tokio::spawn(async move {
        task.await;
        lock(&operations).remove(&id);
    });
}

/// Registers a new operation; refuses an id already in use.
async fn open(
    operations: &Operations,
    reply: &Reply,
    id: u64,
) -> Option<mpsc::UnboundedReceiver<Body>> {
    let inbox = {
        let mut ops = lock(operations);
        if id == 0 || ops.contains_key(&id) {
            None
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            ops.insert(id, tx);
            Some(rx)
        }
    };
    if inbox.is_none() {
        let message = format!("operation id {id} is zero or already in use");
        reply
            .send(Body::Error(ErrorReply::new(
                ErrorKind::UnknownOperation,
                message,
            )))
            .await;
    }
    inbox
}
