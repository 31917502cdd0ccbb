/// First frame of a connection, host → agent: the generations the host can speak.
///
/// ```
/// use krunbox_protocol::messages::Hello;
/// let hello = Hello { min_generation: 1, max_generation: 1, peer: "krunbox 0.1".into() };
/// assert!(hello.min_generation <= hello.max_generation);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Hello {
    /// Oldest generation the host speaks.
    #[prost(uint32, tag = "1")]
    pub min_generation: u32,
    /// Newest generation the host speaks.
    #[prost(uint32, tag = "2")]
    pub max_generation: u32,
    /// Free-form name and version of the host, for the agent's log.
    #[prost(string, tag = "3")]
    pub peer: String,
}

/// Agent → host answer to [`Hello`]: the generation both sides use from now on.
///
/// ```
/// use krunbox_protocol::messages::HelloAck;
/// let ack = HelloAck { generation: 1, agent_version: "0.1.0".into(), features: vec!["pty".into()], ..Default::default() };
/// assert_eq!(ack.generation, 1);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct HelloAck {
    /// The newest generation both sides speak.
    #[prost(uint32, tag = "1")]
    pub generation: u32,
    /// The agent's crate version.
    #[prost(string, tag = "2")]
    pub agent_version: String,
    /// Optional capabilities of this agent build (e.g. `"pty"`, `"files"`).
    #[prost(string, repeated, tag = "3")]
    pub features: Vec<String>,
    /// The guest's boot clock (`CLOCK_BOOTTIME`, ms since the kernel started keeping time)
    /// when the agent's process started: the kernel's share of the boot. 0 from an agent that
    /// does not say.
    #[prost(uint64, tag = "4")]
    pub init_started_ms: u64,
    /// The boot clock when the agent answered this handshake. 0 from an agent that does not
    /// say.
    #[prost(uint64, tag = "5")]
    pub uptime_ms: u64,
}

/// Liveness probe; the agent echoes the nonce in a [`Pong`].
///
/// ```
/// let ping = krunbox_protocol::messages::Ping { nonce: 42 };
/// assert_eq!(ping.nonce, 42);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Ping {
    /// Any value; echoed back.
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
}

/// Answer to [`Ping`].
///
/// ```
/// let pong = krunbox_protocol::messages::Pong { nonce: 42, uptime_ms: 10 };
/// assert_eq!(pong.nonce, 42);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Pong {
    /// The nonce of the ping.
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
    /// Milliseconds since the agent started.
    #[prost(uint64, tag = "2")]
    pub uptime_ms: u64,
}

/// Ask the agent to sync filesystems, stop every process and power the guest off.
/// In host mode (`guest-init --listen unix:PATH`) the agent stops serving and exits instead.
///
/// ```
/// let req = krunbox_protocol::messages::ShutdownRequest { exit_code: 0 };
/// assert_eq!(req.exit_code, 0);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ShutdownRequest {
    /// Exit status the guest reports on its console as it powers off.
    #[prost(int32, tag = "1")]
    pub exit_code: i32,
}

/// Shutdown accepted; the agent closes the connection and powers off after sending it.
///
/// ```
/// let _ack = krunbox_protocol::messages::ShutdownAck {};
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ShutdownAck {}

/// Flow control: the receiver of a data stream (output, stdin, file chunks) grants the sender
/// `bytes` more bytes of payload for the operation named by the envelope id.
///
/// Each data stream starts with [`crate::INITIAL_WINDOW`] bytes of credit; a sender never has
/// more unacknowledged payload in flight than its credit, so one slow reader never makes its
/// peer buffer without bound or stalls the other operations of the connection.
///
/// ```
/// let w = krunbox_protocol::messages::WindowUpdate { bytes: 65536 };
/// assert_eq!(w.bytes, 65536);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WindowUpdate {
    /// Extra payload bytes the sender may now send.
    #[prost(uint32, tag = "1")]
    pub bytes: u32,
}

/// Why an operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum ErrorKind {
    /// Not set: a peer of a newer generation used a kind this side does not know.
    Unspecified = 0,
    /// The request was malformed (empty argv, missing fields, bad path).
    BadRequest = 1,
    /// The path does not exist.
    NotFound = 2,
    /// The agent was not allowed to do it (EACCES / EPERM).
    PermissionDenied = 3,
    /// The path would leave the root the request confined it to.
    OutsideRoot = 4,
    /// Another I/O error; see `errno`.
    Io = 5,
    /// The agent does not know this request.
    Unsupported = 6,
    /// The id is already in use or names no operation.
    UnknownOperation = 7,
    /// The peer broke the flow-control or framing rules.
    ProtocolViolation = 8,
    /// The target exists and the operation refuses to overwrite it.
    AlreadyExists = 9,
}

/// An operation failed; last frame of that operation.
///
/// ```
/// use krunbox_protocol::messages::{ErrorKind, ErrorReply};
/// let e = ErrorReply::new(ErrorKind::NotFound, "/etc/nope: no such file");
/// assert_eq!(e.kind(), ErrorKind::NotFound);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ErrorReply {
    /// Coarse class of the failure.
    #[prost(enumeration = "ErrorKind", tag = "1")]
    pub kind: i32,
    /// The OS error number, when there was one (0 otherwise).
    #[prost(int32, tag = "2")]
    pub errno: i32,
    /// Human-readable description naming the failing path or request.
    #[prost(string, tag = "3")]
    pub message: String,
}

impl ErrorReply {
    /// An error without an errno.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind: kind as i32,
            errno: 0,
            message: message.into(),
        }
    }

    /// An error from an OS error: its errno decides the kind.
    pub fn from_io(err: &std::io::Error, context: impl std::fmt::Display) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            // A path naming the wrong kind of file is the request's fault, not the disk's.
            std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::IsADirectory
            | std::io::ErrorKind::NotADirectory => ErrorKind::BadRequest,
            _ => ErrorKind::Io,
        };
        Self {
            kind: kind as i32,
            errno: err.raw_os_error().unwrap_or(0),
            message: format!("{context}: {err}"),
        }
    }
}
