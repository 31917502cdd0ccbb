use super::{
    ErrorReply, ExecRequest, ExecStarted, ExitStatus, FileChunk, FileRequest, FileResult, Hello,
    HelloAck, OutputChunk, Ping, Pong, PtyResize, ShutdownAck, ShutdownRequest, SignalRequest,
    StdinClose, StdinData, WindowUpdate,
};

/// One frame of the protocol: the operation it belongs to and what it says.
///
/// ```
/// use krunbox_protocol::messages::{Body, Envelope, Ping};
/// let frame = Envelope::new(7, Body::Ping(Ping { nonce: 1 }));
/// assert_eq!(frame.id, 7);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Envelope {
    /// The operation this frame belongs to. Chosen by the host when it opens an operation
    /// (unique per connection, never 0 except for connection-level frames such as the handshake).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// What the frame says; `None` only from a peer speaking a newer generation with a body
    /// this side does not know, which is answered with an `Unsupported` error.
    #[prost(
        oneof = "Body",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20"
    )]
    pub body: Option<Body>,
}

impl Envelope {
    /// Builds a frame for operation `id`.
    pub fn new(id: u64, body: Body) -> Self {
        Self {
            id,
            body: Some(body),
        }
    }

    /// A short name of the body, for logs and error messages.
    pub fn kind(&self) -> &'static str {
        self.body.as_ref().map_or("unknown", Body::kind)
    }
}

/// Everything a frame can carry. Host → agent, agent → host, or both, as each variant says.
#[derive(Clone, PartialEq, ::prost::Oneof)]
pub enum Body {
    /// Host → agent, first frame of a connection.
    #[prost(message, tag = "2")]
    Hello(Hello),
    /// Agent → host, answer to [`Hello`].
    #[prost(message, tag = "3")]
    HelloAck(HelloAck),
    /// Host → agent liveness probe.
    #[prost(message, tag = "4")]
    Ping(Ping),
    /// Agent → host answer to [`Ping`].
    #[prost(message, tag = "5")]
    Pong(Pong),
    /// Host → agent: start a process; the envelope id names the exec from now on.
    #[prost(message, tag = "6")]
    Exec(ExecRequest),
    /// Agent → host: the process runs.
    #[prost(message, tag = "7")]
    ExecStarted(ExecStarted),
    /// Host → agent: bytes for the process's stdin (or the PTY).
    #[prost(message, tag = "8")]
    StdinData(StdinData),
    /// Host → agent: no more stdin.
    #[prost(message, tag = "9")]
    StdinClose(StdinClose),
    /// Agent → host: bytes the process wrote.
    #[prost(message, tag = "10")]
    Output(OutputChunk),
    /// Host → agent: new PTY window size.
    #[prost(message, tag = "11")]
    Resize(PtyResize),
    /// Host → agent: deliver a signal to the process group.
    #[prost(message, tag = "12")]
    Signal(SignalRequest),
    /// Agent → host: how the process ended; last frame of an exec.
    #[prost(message, tag = "13")]
    Exit(ExitStatus),
    /// Host → agent: a file operation; the envelope id names it.
    #[prost(message, tag = "14")]
    File(FileRequest),
    /// Both ways: file content of a read or write stream.
    #[prost(message, tag = "15")]
    FileChunk(FileChunk),
    /// Agent → host: result of a file operation; last frame of it.
    #[prost(message, tag = "16")]
    FileResult(FileResult),
    /// Both ways: the operation named by the envelope id failed; last frame of it.
    #[prost(message, tag = "17")]
    Error(ErrorReply),
    /// Host → agent: sync and power off (or stop serving in host mode).
    #[prost(message, tag = "18")]
    Shutdown(ShutdownRequest),
    /// Agent → host: shutdown accepted; the connection closes after it.
    #[prost(message, tag = "19")]
    ShutdownAck(ShutdownAck),
    /// Both ways: the receiver of a data stream grants the sender more bytes.
    #[prost(message, tag = "20")]
    Window(WindowUpdate),
}

impl Body {
    /// The data payload a stream frame carries (stdin, output, file content), if any.
    pub fn payload_mut(&mut self) -> Option<&mut ::bytes::Bytes> {
        self.payload_field_mut().map(|(_, data)| data)
    }

    /// [`Self::payload_mut`] and where the payload sits on the wire: the body's field number
    /// in [`Envelope`] and the payload's in the body's message (their `tag`s), so that the
    /// frame writer can write the payload from its own buffer after the rest of the frame.
    /// The numbers repeat the `tag`s above and in the messages; `frame/writer.rs`'s tests
    /// decode every such frame it writes, which fails if one is wrong.
    pub(crate) fn payload_field_mut(&mut self) -> Option<(PayloadField, &mut ::bytes::Bytes)> {
        let (body_tag, data_tag, data) = match self {
            Body::StdinData(d) => (8, 1, &mut d.data),
            Body::Output(o) => (10, 2, &mut o.data),
            Body::FileChunk(c) => (15, 1, &mut c.data),
            _ => return None,
        };
        Some((PayloadField { body_tag, data_tag }, data))
    }

    /// A short name of the variant, for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Hello(_) => "hello",
            Body::HelloAck(_) => "hello-ack",
            Body::Ping(_) => "ping",
            Body::Pong(_) => "pong",
            Body::Exec(_) => "exec",
            Body::ExecStarted(_) => "exec-started",
            Body::StdinData(_) => "stdin-data",
            Body::StdinClose(_) => "stdin-close",
            Body::Output(_) => "output",
            Body::Resize(_) => "resize",
            Body::Signal(_) => "signal",
            Body::Exit(_) => "exit",
            Body::File(_) => "file",
            Body::FileChunk(_) => "file-chunk",
            Body::FileResult(_) => "file-result",
            Body::Error(_) => "error",
            Body::Shutdown(_) => "shutdown",
            Body::ShutdownAck(_) => "shutdown-ack",
            Body::Window(_) => "window",
        }
    }
}

/// The field numbers of a stream frame's payload (see [`Body::payload_field_mut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PayloadField {
    /// The body's field in [`Envelope`].
    pub body_tag: u32,
    /// The payload's field in the body's message.
    pub data_tag: u32,
}
