//! Framing: every frame is a 4-byte big-endian length followed by one protobuf [`Envelope`].
//!
//! The length prefix is handled by `tokio_util`'s `LengthDelimitedCodec`, with a hard limit of
//! [`MAX_FRAME_LEN`]: a peer announcing a larger frame is a protocol violation, and the
//! connection is closed before any of it is buffered.

use bytes::Bytes;
use prost::Message;
use tokio_util::codec::LengthDelimitedCodec;

/// Re-exported so that users of [`FrameCodec`] need no direct `tokio-util`/`bytes` dependency.
pub use bytes::BytesMut;
/// Re-exported codec traits implemented by [`FrameCodec`].
pub use tokio_util::codec::{Decoder, Encoder};

use crate::messages::Envelope;

/// The largest frame either side accepts (the length prefix excluded).
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// The largest payload a data frame (output, stdin, file chunk) carries; well under
/// [`MAX_FRAME_LEN`] so that the envelope overhead always fits.
pub const MAX_CHUNK_LEN: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame longer than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length (or encoded length when sending).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame's bytes are not a valid envelope.
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The underlying stream failed.
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes and decodes [`Envelope`] frames on a byte stream.
///
/// ```
/// use bytes::BytesMut;
/// use krunbox_protocol::frame::FrameCodec;
/// use krunbox_protocol::messages::{Body, Envelope, Ping};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = FrameCodec::new();
/// let mut buf = BytesMut::new();
/// codec.encode(Envelope::new(1, Body::Ping(Ping { nonce: 9 })), &mut buf).unwrap();
/// let frame = codec.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(frame.kind(), "ping");
/// ```
#[derive(Debug)]
pub struct FrameCodec {
    length: LengthDelimitedCodec,
}

impl FrameCodec {
    /// A codec with the protocol's limits.
    pub fn new() -> Self {
        let length = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .max_frame_length(MAX_FRAME_LEN)
            .big_endian()
            .new_codec();
        Self { length }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for FrameCodec {
    type Item = Envelope;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Envelope>, FrameError> {
        let announced = announced_len(src);
        match self.length.decode(src) {
            Ok(Some(bytes)) => Ok(Some(Envelope::decode(bytes)?)),
            Ok(None) => Ok(None),
            Err(err) => Err(classify_length_error(err, announced)),
        }
    }
}

impl Encoder<Envelope> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Envelope, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = frame.encoded_len();
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        let body = Bytes::from(frame.encode_to_vec());
        self.length
            .encode(body, dst)
            .map_err(|err| classify_length_error(err, Some(len)))
    }
}

fn announced_len(src: &BytesMut) -> Option<usize> {
    let prefix: [u8; 4] = src.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

fn classify_length_error(err: std::io::Error, announced: Option<usize>) -> FrameError {
    let too_long = err
        .get_ref()
        .is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>());
    match (too_long, announced) {
        (true, Some(len)) => FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        },
        _ => FrameError::Io(err),
    }
}

/// Decodes every complete frame at the start of `bytes`, the way a connection would: the
/// frames decoded so far, then the error that would close the connection, if any.
/// Used by the fuzz target and by tests; never panics on any input.
///
/// ```
/// let (frames, err) = krunbox_protocol::frame::decode_all(&[0, 0, 0, 2, 0xff, 0xff]);
/// assert!(frames.is_empty());
/// assert!(err.is_some());
/// ```
pub fn decode_all(bytes: &[u8]) -> (Vec<Envelope>, Option<FrameError>) {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, None),
            Err(err) => return (frames, Some(err)),
        }
    }
}
