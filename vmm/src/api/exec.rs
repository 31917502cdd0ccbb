//! `GET /v1/sandboxes/{name}/exec`: a command in a running sandbox over a WebSocket.
//!
//! The client's first message is a text frame with the [`ExecStart`] JSON. Then:
//!
//! - client → server: binary frames are stdin; text frames are [`ClientMessage`]s
//!   (`stdin_eof`, `resize`, `signal`);
//! - server → client: a `started` text frame with the pid; binary frames whose first byte
//!   says the stream (1 stdout, 2 stderr) and whose rest is its bytes; last an `exit` text
//!   frame, then a close frame.
//!
//! Output is read from the guest only as fast as the client takes it (the agent's flow
//! control reaches through the WebSocket). A client that goes away kills its command: nothing
//! it started is left running unseen. Each exec has its own agent connection, so one client's
//! end never touches another's.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Path;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use krunbox_protocol::client::{Client, ExecControl, ExecSpec, ExecStdin};
use krunbox_protocol::messages::{CapabilitySets, ExitStatus, Outcome};
use serde::{Deserialize, Serialize};

use super::agent::connect;
use super::error::ApiError;
use crate::cli::sandbox::ExecContext;

/// The stream byte of stdout frames.
pub const STDOUT: u8 = 1;
/// The stream byte of stderr frames.
pub const STDERR: u8 = 2;
/// How long the client has to send its [`ExecStart`].
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client has to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The first message: what to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStart {
    /// The program and its arguments.
    pub cmd: Vec<String>,
    /// Variables on top of the sandbox's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the sandbox's).
    pub cwd: Option<String>,
    /// UID, UID:GID, NAME or NAME:GROUP (default: the sandbox's user).
    pub user: Option<String>,
    /// Run on a pseudo-terminal (its output all arrives as stdout).
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size (with `tty`).
    pub rows: Option<u16>,
    /// The terminal's size (with `tty`).
    pub cols: Option<u16>,
    /// `TERM` (with `tty`; default `xterm`).
    pub term: Option<String>,
    /// Keep stdin open for the client's binary frames (default true; false: stdin is empty).
    pub stdin: Option<bool>,
    /// Seconds after which the agent kills the command.
    pub timeout_secs: Option<u64>,
    /// Resource limits, as `krunbox exec --ulimit` takes them (`nofile=1024:4096`).
    #[serde(default)]
    pub ulimits: Vec<String>,
    /// Supplementary groups of the image (names or GIDs) to add to the user's, as
    /// `krunbox exec --group-add` takes them.
    #[serde(default)]
    pub group_add: Vec<String>,
    /// Capabilities to take from the command, as `krunbox exec --cap-drop` takes them
    /// (`NET_RAW`, `ALL`).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// Capabilities to give back after `cap_drop`.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Set `no_new_privs` on the command.
    #[serde(default)]
    pub no_new_privileges: bool,
}

/// A control message from the client.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// End of stdin.
    StdinEof,
    /// The terminal's new size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Send a signal to the command: a number or a name (`TERM`, `SIGINT`, ...).
    Signal {
        /// Which.
        signal: SignalName,
    },
}

/// A signal by number or by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SignalName {
    /// As a number (Linux's).
    Number(i32),
    /// As a name, with or without `SIG`.
    Name(String),
}

impl SignalName {
    /// Linux's number for it.
    pub fn number(&self) -> Result<i32, ApiError> {
        match self {
            Self::Number(n) if (1..=64).contains(n) => Ok(*n),
            Self::Number(n) => Err(ApiError::BadRequest(format!("signal {n} does not exist"))),
            Self::Name(name) => {
                let upper = name.to_ascii_uppercase();
                let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
                // Linux's numbers (the guest's), whatever the host's are.
                let number = match bare {
                    "HUP" => 1,
                    "INT" => 2,
                    "QUIT" => 3,
                    "KILL" => 9,
                    "USR1" => 10,
                    "USR2" => 12,
                    "PIPE" => 13,
                    "ALRM" => 14,
                    "TERM" => 15,
                    "CONT" => 18,
                    "STOP" => 19,
                    "WINCH" => 28,
                    _ => return Err(ApiError::BadRequest(format!("unknown signal {name:?}"))),
                };
                Ok(number)
            }
        }
    }
}

/// A text frame from the server.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The command runs.
    Started {
        /// Its pid in the guest.
        pid: Option<u32>,
    },
    /// The command ended; the last message.
    Exit(ExitReport),
    /// The exec failed (bad request, sandbox not running, VM gone); the last message.
    Error {
        /// The error's kind, as in HTTP error bodies.
        kind: &'static str,
        /// Why.
        message: String,
    },
}

/// How a command ended, as the API reports it (here and in the MCP tools).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitReport {
    /// What a shell would say: the code, 128 + signal, 127 not found, 126 not executable.
    pub exit_code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// The agent killed it at `timeout_secs`.
    pub timed_out: bool,
    /// Why it never started.
    pub spawn_error: Option<String>,
}

impl From<&ExitStatus> for ExitReport {
    fn from(status: &ExitStatus) -> Self {
        Self {
            exit_code: status.shell_code(),
            signal: match status.outcome {
                Some(Outcome::Signal(signal)) => Some(signal),
                _ => None,
            },
            timed_out: status.timed_out,
            spawn_error: match &status.outcome {
                Some(Outcome::SpawnFailed(failure)) => Some(failure.message.clone()),
                _ => None,
            },
        }
    }
}

/// The agent request for `start` in the sandbox whose exec context is `context`.
pub fn exec_spec(start: &ExecStart, context: ExecContext) -> Result<ExecSpec, ApiError> {
    if start.cmd.is_empty() {
        return Err(ApiError::BadRequest("cmd: give the program to run".into()));
    }
    let mut spec = ExecSpec::new(start.cmd.clone());
    for (key, value) in &context.env {
        spec = spec.env(key, value);
    }
    if let Some(dir) = start.cwd.clone().or(context.workdir) {
        spec = spec.cwd(dir);
    }
    if let Some((uid, gid)) = context.user {
        spec = spec.user(uid, gid);
    }
    if !context.groups.is_empty() {
        spec = spec.groups(context.groups.iter().copied());
    }
    if let Some(secs) = start.timeout_secs {
        spec = spec.timeout(Duration::from_secs(secs));
    }
    for text in &start.ulimits {
        let limit = krunbox_protocol::rlimit::parse_ulimit(text)
            .map_err(|e| ApiError::BadRequest(format!("ulimits: {e}")))?;
        spec = spec.rlimit(limit);
    }
    if !start.cap_add.is_empty() || !start.cap_drop.is_empty() {
        let mask = |field: &str, names: &[String]| {
            krunbox_protocol::capability::mask_of(names)
                .map_err(|e| ApiError::BadRequest(format!("{field}: {e}")))
        };
        spec = spec.capabilities(CapabilitySets::docker(
            mask("cap_add", &start.cap_add)?,
            mask("cap_drop", &start.cap_drop)?,
        ));
    }
    spec = spec.no_new_privileges(start.no_new_privileges);
    if start.tty {
        spec = spec
            .pty(start.rows.unwrap_or(24), start.cols.unwrap_or(80))
            .term(start.term.clone().unwrap_or_else(|| "xterm".into()));
    } else {
        spec = spec.stdin(start.stdin.unwrap_or(true));
    }
    Ok(spec)
}

/// Connects to the sandbox's agent and builds the request for `start`.
pub async fn prepare(name: &str, start: &ExecStart) -> Result<(Client, ExecSpec), ApiError> {
    let (spec, client) = connect(name).await?;
    let env = start
        .env
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                Err(ApiError::BadRequest(format!(
                    "env: {k:?} is not a variable name"
                )))
            } else {
                Ok((k.clone(), v.clone()))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut context = super::error::blocking({
        let user = start.user.clone();
        let group_add = start.group_add.clone();
        move || {
            Ok(ExecContext::new(
                &spec,
                user.as_deref(),
                &group_add,
                env,
                None,
            )?)
        }
    })
    .await?;
    // The user's memberships only: an older agent goes without them rather than failing (the
    // groups asked for are refused by the client).
    if start.group_add.is_empty() && !crate::cli::session::serves_groups(client.agent_info()) {
        context.groups.clear();
    }
    Ok((client, exec_spec(start, context)?))
}

/// `GET /v1/sandboxes/{name}/exec` (WebSocket).
pub async fn handler(Path(name): Path<String>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| async move {
        let (sink, stream) = socket.split();
        let mut ends = Ends { sink, stream };
        let outcome = session(&name, &mut ends).await;
        let last = match outcome {
            Ok(report) => ServerMessage::Exit(report),
            Err(err) => ServerMessage::Error {
                kind: err.kind(),
                message: err.to_string(),
            },
        };
        let _ = ends.sink.send(json_message(&last)).await;
        ends.close().await;
    })
}

/// The two halves of the connection.
struct Ends {
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
}

impl Ends {
    /// The closing handshake: our close frame, then the client's answer (or
    /// [`CLOSE_TIMEOUT`]). Dropping the connection at once could make the client fail to
    /// answer our close, and some clients then lose the messages before it.
    async fn close(mut self) {
        if self.sink.send(Message::Close(None)).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(message)) = self.stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

fn json_message(message: &ServerMessage) -> Message {
    Message::Text(serde_json::to_string(message).unwrap_or_default().into())
}

/// The client went away (or broke the protocol).
fn gone(what: &str) -> ApiError {
    ApiError::BadRequest(format!("the client {what}"))
}

async fn first_message(stream: &mut SplitStream<WebSocket>) -> Result<ExecStart, ApiError> {
    let message = tokio::time::timeout(START_TIMEOUT, stream.next())
        .await
        .map_err(|_| gone("sent no exec request within 30 s"))?;
    match message {
        Some(Ok(Message::Text(text))) => serde_json::from_str(&text)
            .map_err(|e| ApiError::BadRequest(format!("the exec request: {e}"))),
        Some(Ok(_)) => Err(ApiError::BadRequest(
            "the first message must be the exec request, as JSON text".into(),
        )),
        _ => Err(gone("closed the connection")),
    }
}

/// Output frames queued for the client: each pump waits while it is full, so a client that
/// reads slowly slows the command. A chunk's credit goes back to the agent as a pump takes
/// it, so what an exec holds here is bounded by the agent's window plus this queue: four
/// chunks, as much again as the window (a chunk is at most
/// [`MAX_CHUNK_LEN`](krunbox_protocol::frame::MAX_CHUNK_LEN), 256 KiB).
const FRAME_QUEUE: usize = 4;

async fn session(name: &str, ends: &mut Ends) -> Result<ExitReport, ApiError> {
    let start = first_message(&mut ends.stream).await?;
    let (client, spec) = prepare(name, &start).await?;
    let mut execution = client.exec(spec).await?;
    ends.sink
        .send(json_message(&ServerMessage::Started {
            pid: execution.pid(),
        }))
        .await
        .map_err(|_| gone("closed the connection"))?;
    let control = execution.control();
    let stdin = feed_stdin(execution.take_stdin());
    let (_, stdout, stderr, exit) = execution.split();
    // Each stream is read to its end by a task of its own (a read is never cancelled, so no
    // output is lost), into one queue the writer empties into the socket.
    let (frames, mut queued) = tokio::sync::mpsc::channel::<Message>(FRAME_QUEUE);
    let pumps = [(STDOUT, stdout), (STDERR, stderr)].map(|(byte, mut reader)| {
        let frames = frames.clone();
        tokio::spawn(async move {
            while let Some(data) = reader.recv().await {
                let mut frame = Vec::with_capacity(data.len() + 1);
                frame.push(byte);
                frame.extend_from_slice(&data);
                if frames.send(Message::Binary(frame.into())).await.is_err() {
                    return;
                }
            }
        })
    });
    drop(frames);
    let outcome = relay(ends, &mut queued, exit, &stdin, &control).await;
    if outcome.is_err() {
        // Nothing a client started runs on unseen.
        kill(&control).await;
    }
    for pump in pumps {
        pump.abort();
    }
    outcome
}

/// Runs the exec to its end: output to the client, the client's stdin and control messages to
/// the command; returns after the exit status and all output went out.
async fn relay(
    ends: &mut Ends,
    queued: &mut tokio::sync::mpsc::Receiver<Message>,
    exit: impl std::future::Future<Output = Result<ExitStatus, krunbox_protocol::client::ClientError>>,
    stdin: &tokio::sync::mpsc::Sender<StdinOp>,
    control: &ExecControl,
) -> Result<ExitReport, ApiError> {
    tokio::pin!(exit);
    let mut status = None;
    let mut output_open = true;
    // Stdin the feeder has no room for yet; the client is not read until it has.
    let mut pending: Option<StdinOp> = None;
    loop {
        if status.is_some() && !output_open {
            break;
        }
        tokio::select! {
            frame = queued.recv(), if output_open => match frame {
                Some(frame) => {
                    if ends.sink.send(frame).await.is_err() {
                        return Err(gone("closed the connection"));
                    }
                }
                // Both pumps ended: all output went out.
                None => output_open = false,
            },
            result = &mut exit, if status.is_none() => {
                status = Some(result?);
            }
            permit = stdin.reserve(), if pending.is_some() => {
                // An error: the command closed its stdin, and later input goes nowhere.
                if let (Ok(permit), Some(op)) = (permit, pending.take()) {
                    permit.send(op);
                }
            }
            message = ends.stream.next(), if pending.is_none() => match message {
                Some(Ok(Message::Binary(data))) => pending = Some(StdinOp::Data(data)),
                Some(Ok(Message::Text(text))) => {
                    let message: ClientMessage = serde_json::from_str(&text)
                        .map_err(|e| ApiError::BadRequest(format!("a control message: {e}")))?;
                    match message {
                        ClientMessage::StdinEof => pending = Some(StdinOp::Eof),
                        ClientMessage::Resize { rows, cols } => control.resize(rows, cols).await?,
                        ClientMessage::Signal { signal } => control.signal(signal.number()?).await?,
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    return Err(gone("closed the connection"));
                }
            },
        }
    }
    status
        .map(|status| ExitReport::from(&status))
        .ok_or_else(|| ApiError::Internal("no exit status".into()))
}

/// What the client sent for the command's stdin.
enum StdinOp {
    /// Bytes.
    Data(Bytes),
    /// The end.
    Eof,
}

/// Writes the client's stdin to the command on a task of its own, so that a command that
/// reads its stdin only as it writes its output never waits on itself.
fn feed_stdin(stdin: Option<ExecStdin>) -> tokio::sync::mpsc::Sender<StdinOp> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let Some(mut input) = stdin else { return };
        while let Some(op) = rx.recv().await {
            match op {
                StdinOp::Data(data) => {
                    if input.write(&data).await.is_err() {
                        return;
                    }
                }
                StdinOp::Eof => {
                    let _ = input.close().await;
                    return;
                }
            }
        }
    });
    tx
}

async fn kill(control: &ExecControl) {
    if let Err(err) = control.signal(libc::SIGKILL).await {
        tracing::debug!(%err, "could not kill the command of a client that went away");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        let name = |s: &str| SignalName::Name(s.into()).number().unwrap();
        assert_eq!(name("TERM"), 15);
        assert_eq!(name("sigint"), 2);
        assert_eq!(name("USR1"), 10);
        assert_eq!(SignalName::Number(9).number().unwrap(), 9);
        assert!(SignalName::Number(0).number().is_err());
        assert!(SignalName::Name("NOPE".into()).number().is_err());
    }

    #[test]
    fn control_messages_parse() {
        let message: ClientMessage =
            serde_json::from_str(r#"{"type":"signal","signal":"TERM"}"#).unwrap();
        assert!(matches!(message, ClientMessage::Signal { .. }));
        let message: ClientMessage =
            serde_json::from_str(r#"{"type":"resize","rows":40,"cols":100}"#).unwrap();
        assert!(matches!(
            message,
            ClientMessage::Resize {
                rows: 40,
                cols: 100
            }
        ));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"other"}"#).is_err());
    }
}
