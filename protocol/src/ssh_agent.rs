//! The SSH agent protocol's framing (draft-miller-ssh-agent) and the request filter krunbox
//! puts between a guest and the host's SSH agent.
//!
//! A guest (root in it included) is hostile, and the host's agent holds the user's keys: the
//! guest may list them and ask for signatures, nothing else. "Remove all keys", "lock",
//! "add a key", extensions and anything unknown are answered with `SSH_AGENT_FAILURE` and never
//! reach the agent. This module is pure (no I/O) so that the host's relay and a fuzz target
//! run the same code.
//!
//! Every message is a `uint32` big-endian length, then that many bytes, the first of which is
//! the message type. A length above [`MAX_MESSAGE`] is refused before anything of the body is
//! buffered, and so is a length of zero (a message without a type).
//!
//! ```
//! use krunbox_protocol::ssh_agent::{decide, take_message, Decision, REQUEST_IDENTITIES};
//!
//! let mut buffer = vec![0, 0, 0, 1, REQUEST_IDENTITIES, 0, 0];
//! let message = take_message(&mut buffer).unwrap().unwrap();
//! assert_eq!(decide(&message), Decision::Forward);
//! assert_eq!(buffer, [0, 0]); // the start of the next message stays
//! assert_eq!(take_message(&mut buffer).unwrap(), None);
//! ```

/// The largest message accepted, without its length prefix. OpenSSH's agent refuses more
/// than 256 KiB too (`AGENT_MAX_LEN`); signing requests and identity lists are far smaller.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// `SSH_AGENT_FAILURE`: the reply to a refused request.
pub const FAILURE: u8 = 5;
/// `SSH_AGENTC_REQUEST_IDENTITIES`: list the keys (forwarded).
pub const REQUEST_IDENTITIES: u8 = 11;
/// `SSH_AGENTC_SIGN_REQUEST`: sign data with a key (forwarded).
pub const SIGN_REQUEST: u8 = 13;

/// The whole `SSH_AGENT_FAILURE` message, length prefix included.
pub const FAILURE_REPLY: [u8; 5] = [0, 0, 0, 1, FAILURE];

const LENGTH_PREFIX: usize = 4;

/// Why a byte stream is not a sequence of agent messages; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced length is above [`MAX_MESSAGE`].
    #[error("an SSH agent message of {length} bytes is over the limit of {MAX_MESSAGE}")]
    TooLong {
        /// The announced length.
        length: u32,
    },
    /// A length of zero: no message type.
    #[error("an empty SSH agent message (no type)")]
    Empty,
}

/// What the relay does with a guest's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it to the host's agent and its reply back.
    Forward,
    /// Answer [`FAILURE_REPLY`] without asking the agent.
    Refuse {
        /// The refused message type (for the log).
        message_type: u8,
    },
}

/// Removes the first complete message (length prefix included) from the front of `buffer`.
/// `Ok(None)`: not complete yet (read more). An error means the stream is not an agent
/// conversation and must be closed; it is reported as soon as the length prefix is in, so
/// an oversized body is never buffered.
pub fn take_message(buffer: &mut Vec<u8>) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(prefix) = buffer.first_chunk::<LENGTH_PREFIX>() else {
        return Ok(None);
    };
    let length = u32::from_be_bytes(*prefix);
    let body = usize::try_from(length)
        .ok()
        .filter(|&body| body <= MAX_MESSAGE)
        .ok_or(FrameError::TooLong { length })?;
    if body == 0 {
        return Err(FrameError::Empty);
    }
    let total = LENGTH_PREFIX + body;
    if buffer.len() < total {
        return Ok(None);
    }
    let rest = buffer.split_off(total);
    Ok(Some(std::mem::replace(buffer, rest)))
}

/// The type of a message [`take_message`] returned (`None` for anything shorter than a
/// message with a type).
pub fn message_type(message: &[u8]) -> Option<u8> {
    message.get(LENGTH_PREFIX).copied()
}

/// Whether a guest's request `message` (as [`take_message`] returned it) may reach the host's
/// agent: only listing the keys and signing.
pub fn decide(message: &[u8]) -> Decision {
    match message_type(message) {
        Some(REQUEST_IDENTITIES | SIGN_REQUEST) => Decision::Forward,
        Some(message_type) => Decision::Refuse { message_type },
        None => Decision::Refuse { message_type: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SSH_AGENTC_REMOVE_ALL_IDENTITIES`, `SSH_AGENTC_LOCK`, `SSH_AGENTC_UNLOCK`,
    /// `SSH_AGENTC_ADD_IDENTITY`, `SSH_AGENTC_REMOVE_IDENTITY`,
    /// `SSH_AGENTC_ADD_ID_CONSTRAINED`, `SSH_AGENTC_ADD_SMARTCARD_KEY`,
    /// `SSH_AGENTC_EXTENSION`, and types no draft defines.
    const REFUSED: [u8; 10] = [19, 22, 23, 17, 18, 25, 20, 27, 0, 255];

    fn message(message_type: u8, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len() + 1).unwrap();
        [&length.to_be_bytes()[..], &[message_type], payload].concat()
    }

    #[test]
    fn only_listing_and_signing_are_forwarded() {
        assert_eq!(decide(&message(11, b"")), Decision::Forward);
        assert_eq!(decide(&message(13, b"key+data+flags")), Decision::Forward);
        for message_type in REFUSED {
            assert_eq!(
                decide(&message(message_type, b"x")),
                Decision::Refuse { message_type },
                "type {message_type}"
            );
        }
    }

    #[test]
    fn messages_are_split_where_their_lengths_say_whatever_the_reads() {
        let stream = [message(11, b""), message(13, b"abc"), message(19, b"")].concat();
        for chunk in 1..=stream.len() {
            let mut buffer = Vec::new();
            let mut messages = Vec::new();
            for piece in stream.chunks(chunk) {
                buffer.extend_from_slice(piece);
                while let Some(message) = take_message(&mut buffer).unwrap() {
                    messages.push(message);
                }
            }
            assert_eq!(
                messages,
                [message(11, b""), message(13, b"abc"), message(19, b"")],
                "reads of {chunk} bytes"
            );
            assert!(buffer.is_empty());
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_body_arrives() {
        let mut buffer = (MAX_MESSAGE as u32 + 1).to_be_bytes().to_vec();
        assert_eq!(
            take_message(&mut buffer),
            Err(FrameError::TooLong {
                length: MAX_MESSAGE as u32 + 1
            })
        );
        let mut buffer = u32::MAX.to_be_bytes().to_vec();
        assert!(matches!(
            take_message(&mut buffer),
            Err(FrameError::TooLong { .. })
        ));
        // The largest allowed length waits for its body.
        let mut buffer = (MAX_MESSAGE as u32).to_be_bytes().to_vec();
        buffer.push(SIGN_REQUEST);
        assert_eq!(take_message(&mut buffer), Ok(None));
    }

    #[test]
    fn an_empty_message_is_an_error_and_a_partial_prefix_waits() {
        assert_eq!(take_message(&mut vec![0, 0, 0, 0]), Err(FrameError::Empty));
        let mut buffer = vec![0, 0, 0];
        assert_eq!(take_message(&mut buffer), Ok(None));
        assert_eq!(buffer, [0, 0, 0], "nothing is consumed");
        assert_eq!(decide(&[0, 0, 0]), Decision::Refuse { message_type: 0 });
    }

    #[test]
    fn the_failure_reply_is_a_well_formed_failure_message() {
        let mut buffer = FAILURE_REPLY.to_vec();
        let reply = take_message(&mut buffer).unwrap().unwrap();
        assert_eq!(message_type(&reply), Some(FAILURE));
    }
}
