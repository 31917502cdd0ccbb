//! Framing: every frame is a 4-byte big-endian length followed by one protobuf [`Envelope`].
//!
//! Incoming length prefixes have a hard limit of [`MAX_FRAME_LEN`]: a peer announcing a larger
//! frame is a protocol violation, and the connection is closed before any of it is buffered.
//! Both ends read frames with [`FrameReader`] (`reader.rs`: a bulk frame into a buffer of its
//! own) and write them with [`FrameWriter`] (`writer.rs`: small ones gathered, bulk payloads
//! from their own buffers); `pool.rs` keeps those buffers for the next chunk. [`FrameCodec`]
//! is the same format for `tokio_util`'s `Framed` (tests, hostile peers in tests), and
//! [`decode_all`] and [`encode_all`] are the reader and writer over bytes in memory.

use bytes::{Buf, BufMut, Bytes};
use prost::Message;

/// Re-exported so that users of [`FrameCodec`] need no direct `tokio-util`/`bytes` dependency.
pub use bytes::BytesMut;
/// Re-exported codec traits implemented by [`FrameCodec`].
pub use tokio_util::codec::{Decoder, Encoder};

use crate::messages::Envelope;

mod pool;
mod reader;
mod writer;

pub use pool::{chunk_buffer, recycle, recycle_buffer};
pub use reader::FrameReader;
pub use writer::{FrameWriter, BULK_PAYLOAD_MIN};

/// The length prefix.
const PREFIX_LEN: usize = 4;

/// The largest frame either side accepts (the length prefix excluded).
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// The largest payload a data frame (output, stdin, file chunk) carries; well under
/// [`MAX_FRAME_LEN`] so that the envelope overhead always fits. Each chunk is read into a
/// buffer of its own, taken from and given back to the pool (`pool.rs`); 256 KiB chunks beat
/// 64 KiB ones, which take four frames, four reads and four wake-ups for the same bytes
/// (measured side by side with `KRUNBOX_BENCH_AGENT`, before the pool: stdout 0.83 against
/// 0.63 GB/s, get 1.04 against 0.79, the musl agent in host mode).
pub const MAX_CHUNK_LEN: usize = 256 * 1024;

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
#[derive(Debug, Default)]
pub struct FrameCodec;

impl FrameCodec {
    /// A codec with the protocol's limits.
    pub fn new() -> Self {
        Self
    }
}

impl Decoder for FrameCodec {
    type Item = Envelope;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Envelope>, FrameError> {
        let Some(len) = announced_len(src)? else {
            return Ok(None);
        };
        if src.len() < PREFIX_LEN + len {
            src.reserve(PREFIX_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        decode_frame(src.split_to(len).freeze()).map(Some)
    }
}

/// The length a frame's prefix at the start of `src` announces, once all four bytes are
/// there; a length past [`MAX_FRAME_LEN`] is an error.
fn announced_len(src: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = src.get(..PREFIX_LEN) else {
        return Ok(None);
    };
    let mut be = [0u8; PREFIX_LEN];
    be.copy_from_slice(prefix);
    let len = u32::from_be_bytes(be) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(Some(len))
}

/// One frame's envelope from its bytes (the prefix excluded).
fn decode_frame(bytes: Bytes) -> Result<Envelope, FrameError> {
    let frame_len = bytes.len();
    let mut envelope = Envelope::decode(bytes.clone())?;
    if own_small_payload(&mut envelope, frame_len) {
        // Nothing of the envelope refers to the frame now (only payloads are not copied by
        // the decoder): its buffer can serve the next chunk.
        recycle(bytes);
    }
    Ok(envelope)
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
        // Straight into the write buffer: the length prefix, then the message (no buffer of
        // its own in between, which for bulk data was one more copy of every byte).
        dst.reserve(PREFIX_LEN + len);
        dst.put_u32(len as u32);
        frame
            .encode(dst)
            .map_err(|err| FrameError::Io(std::io::Error::other(err)))
    }
}

/// Reads at most `len` bytes from `reader` into a buffer of their own, which becomes a chunk
/// frame's payload as it is (no second copy of bulk data); empty at end of file.
pub async fn read_chunk<R>(reader: &mut R, len: usize) -> std::io::Result<Bytes>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
{
    use tokio::io::AsyncReadExt;
    let mut buf = chunk_buffer();
    // `take`: the buffer's capacity may exceed `len`, the credit this chunk may use.
    (&mut *reader).take(len as u64).read_buf(&mut buf).await?;
    Ok(chunk_payload(buf))
}

/// The payload of a chunk read into `buf`: the buffer itself when the read filled at least
/// half of it, else a copy of what was read (and the buffer goes back to the pool), so that a
/// short read (a line of terminal output, or a read limited by little credit) does not hold a
/// whole buffer while its frame waits: the frames a window allows could otherwise pin a
/// chunk buffer each.
pub fn chunk_payload(buf: BytesMut) -> Bytes {
    if buf.len().saturating_mul(2) < buf.capacity() {
        let copy = Bytes::copy_from_slice(&buf);
        recycle_buffer(buf);
        copy
    } else {
        buf.freeze()
    }
}

/// Payloads at least this large keep sharing the read buffer (no copy for bulk data).
const SHARED_PAYLOAD_MIN: usize = 64 * 1024;

/// A payload decoded without copying shares its frame's buffer, so one byte of payload (say
/// in a 1 MiB frame whose rest is unknown fields, which the decoder skips) would keep the
/// whole frame alive while flow control counts one byte. Payloads under
/// [`SHARED_PAYLOAD_MIN`], or under half their frame, are copied out (returns whether it
/// was): a shared payload is at least half of a buffer of its own frame's size (`reader.rs`
/// reads every frame that long into its own), so what a peer makes this side hold stays
/// within 2× what flow control charges it.
fn own_small_payload(envelope: &mut Envelope, frame_len: usize) -> bool {
    let Some(data) = envelope.body.as_mut().and_then(|b| b.payload_mut()) else {
        return false;
    };
    if data.len() < SHARED_PAYLOAD_MIN || data.len().saturating_mul(2) < frame_len {
        *data = Bytes::copy_from_slice(data);
        return true;
    }
    false
}

/// Decodes the frames of `bytes` with [`FrameReader`], as a connection would: the frames
/// decoded, then the error that would close the connection, if any (bytes that end inside a
/// frame are one). Used by the fuzz target and by tests; never panics on any input.
///
/// ```
/// let (frames, err) = krunbox_protocol::frame::decode_all(&[0, 0, 0, 2, 0xff, 0xff]);
/// assert!(frames.is_empty());
/// assert!(err.is_some());
/// ```
pub fn decode_all(bytes: &[u8]) -> (Vec<Envelope>, Option<FrameError>) {
    use futures_util::FutureExt;
    let mut reader = FrameReader::new(bytes);
    let mut frames = Vec::new();
    loop {
        // A byte slice is always ready: each read completes at once.
        match reader.next().now_or_never().flatten() {
            Some(Ok(frame)) => frames.push(frame),
            Some(Err(err)) => return (frames, Some(err)),
            None => return (frames, None),
        }
    }
}

/// Encodes `frames` with [`FrameWriter`], as a connection would (bulk payloads written after
/// their hand-encoded header). For the fuzz target and tests.
pub fn encode_all(frames: Vec<Envelope>) -> Result<Vec<u8>, FrameError> {
    use futures_util::FutureExt;
    let mut out = Vec::new();
    let mut writer = FrameWriter::new(&mut out);
    let written = async {
        for frame in frames {
            writer.feed(frame).await?;
        }
        writer.flush().await
    };
    // Writes to a Vec are always ready.
    match written.now_or_never() {
        Some(result) => result?,
        None => return Err(FrameError::Io(std::io::ErrorKind::WouldBlock.into())),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Body, OutputChunk};
    use tokio_util::codec::Decoder;

    /// One frame: an output chunk of `payload` bytes followed by `padding` bytes of an
    /// unknown field (field 999, length-delimited), as a hostile peer could send.
    fn frame(payload: usize, padding: usize) -> BytesMut {
        let envelope = Envelope::new(
            1,
            Body::Output(OutputChunk {
                stream: 1,
                data: vec![7u8; payload].into(),
                eof: false,
            }),
        );
        let mut body = envelope.encode_to_vec();
        if padding > 0 {
            prost::encoding::bytes::encode(999, &vec![0u8; padding], &mut body);
        }
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        buf.extend_from_slice(&body);
        buf
    }

    fn decoded_payload(mut buf: BytesMut) -> (Bytes, std::ops::Range<usize>) {
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let envelope = FrameCodec::new().decode(&mut buf).unwrap().unwrap();
        match envelope.body {
            Some(Body::Output(chunk)) => (chunk.data, range),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_tiny_payload_in_a_padded_frame_does_not_keep_the_frame_alive() {
        let (data, buffer) = decoded_payload(frame(1, 900 * 1024));
        assert_eq!(&data[..], [7]);
        assert!(
            !buffer.contains(&(data.as_ptr() as usize)),
            "the byte was copied out"
        );
    }

    #[test]
    fn bulk_payloads_are_not_copied() {
        let (data, buffer) = decoded_payload(frame(256 * 1024, 0));
        assert_eq!(data.len(), 256 * 1024);
        assert!(
            buffer.contains(&(data.as_ptr() as usize)),
            "zero-copy for bulk data"
        );
    }
}
