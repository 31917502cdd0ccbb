use crate::frame::FrameError;
use crate::generation::NoCommonGeneration;
use crate::messages::{ErrorKind, ErrorReply};
use crate::transport::ConnectError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not reach the agent.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The byte stream failed or carried a bad frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Host and agent share no protocol generation.
    #[error(transparent)]
    Generation(#[from] NoCommonGeneration),
    /// The connection to the agent closed while the call was in progress.
    #[error("connection to the agent closed during {operation}")]
    ConnectionClosed {
        /// What was in progress.
        operation: &'static str,
    },
    /// The agent refused or failed the operation.
    #[error("agent error during {operation}: {} ({:?}, errno {})", .reply.message, .reply.kind(), .reply.errno)]
    Remote {
        /// What was in progress.
        operation: &'static str,
        /// The agent's answer.
        reply: ErrorReply,
    },
    /// The agent answered with a frame that makes no sense at this point.
    #[error("agent sent an unexpected {got} frame during {operation}")]
    UnexpectedFrame {
        /// What was in progress.
        operation: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// A local reader or writer (the source of a put, the sink of a get) failed.
    #[error("local I/O during {operation}: {source}")]
    LocalIo {
        /// What was in progress.
        operation: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The request is invalid before it is even sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The agent does not announce a feature the request needs (an older guest-init).
    #[error(
        "the guest agent (version {agent_version}) cannot {what}: it lacks the `{feature}` feature"
    )]
    MissingFeature {
        /// The feature's name in the handshake.
        feature: &'static str,
        /// What the request asked for.
        what: &'static str,
        /// The agent's version.
        agent_version: String,
    },
}

impl ClientError {
    /// The agent's error kind, when the agent refused the operation.
    pub fn remote_kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Remote { reply, .. } => Some(reply.kind()),
            _ => None,
        }
    }
}
