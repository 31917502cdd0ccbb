//! Writing frames to a connection, as both ends do from their writer task.
//!
//! - Small frames are encoded into one buffer and written together: the writer task feeds
//!   every frame already queued and [`FrameWriter::flush`]es only when the queue runs dry, so a
//!   burst (ExecStarted, output, Exit) costs one `write` instead of one each.
//! - A bulk frame (a payload of [`BULK_PAYLOAD_MIN`] or more) is not copied: the bytes before
//!   its payload are encoded by hand and written together with the payload, from the payload's
//!   own buffer, in one vectored write; the buffer then goes back to the chunk pool
//!   ([`super::pool`]). Protobuf lets fields come in any order, so writing the payload field
//!   last (after `eof`) decodes to the same message: the wire format does not change.

use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Encoder;

use super::{pool, FrameCodec, FrameError, MAX_FRAME_LEN};
use crate::messages::Envelope;

/// Payloads at least this large are written from their own buffer.
pub const BULK_PAYLOAD_MIN: usize = 16 * 1024;
/// Encoded small frames are written once they reach this much, queue dry or not.
const PENDING_MAX: usize = 256 * 1024;
/// The envelope's `id` field.
const ID_TAG: u32 = 1;

/// Frames to a byte stream, in order.
pub struct FrameWriter<W> {
    out: W,
    /// Frames encoded and not yet written.
    pending: BytesMut,
    codec: FrameCodec,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer of frames to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            pending: BytesMut::new(),
            codec: FrameCodec::new(),
        }
    }

    /// Takes `frame`: a small one is encoded and written with the next flush (or once enough
    /// are pending); a bulk one is written now, after what is pending.
    pub async fn feed(&mut self, mut frame: Envelope) -> Result<(), FrameError> {
        match encode_before_payload(&mut frame, &mut self.pending)? {
            Some(payload) => {
                self.write_pending_and(&payload).await?;
                pool::recycle(payload);
            }
            None => {
                self.codec.encode(frame, &mut self.pending)?;
                if self.pending.len() >= PENDING_MAX {
                    self.write_pending_and(&[]).await?;
                }
            }
        }
        Ok(())
    }

    /// Writes everything taken so far.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        self.write_pending_and(&[]).await?;
        self.out.flush().await?;
        Ok(())
    }

    /// [`Self::feed`] then [`Self::flush`].
    pub async fn send(&mut self, frame: Envelope) -> Result<(), FrameError> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// Writes the pending bytes, then `payload`, with as few writes as the stream allows.
    async fn write_pending_and(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut written = 0;
        while !self.pending.is_empty() || written < payload.len() {
            let slices = [
                IoSlice::new(&self.pending),
                IoSlice::new(&payload[written..]),
            ];
            let n = self.out.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let from_pending = n.min(self.pending.len());
            self.pending.advance(from_pending);
            written += n - from_pending;
        }
        self.pending.clear();
        Ok(())
    }
}

/// For a frame with a bulk payload: appends to `out` the frame's length prefix and every byte
/// of it before the payload, and returns the payload (which follows on the wire). `None`, and
/// nothing appended, for any other frame.
fn encode_before_payload(
    frame: &mut Envelope,
    out: &mut BytesMut,
) -> Result<Option<Bytes>, FrameError> {
    let id = frame.id;
    let Some(body) = frame.body.as_mut() else {
        return Ok(None);
    };
    let Some((field, data)) = body.payload_field_mut() else {
        return Ok(None);
    };
    if data.len() < BULK_PAYLOAD_MIN {
        return Ok(None);
    }
    let payload = std::mem::take(data);
    // The body without its payload, as prost writes it: key, length, then the message's
    // other fields, which are what is kept.
    let rest = message_of(body);
    let payload_field_len =
        key_len(field.data_tag) + encoded_len_varint(payload.len() as u64) + payload.len();
    let message_len = rest.len() + payload_field_len;
    let id_len = if id == 0 {
        0
    } else {
        key_len(ID_TAG) + encoded_len_varint(id)
    };
    let frame_len =
        id_len + key_len(field.body_tag) + encoded_len_varint(message_len as u64) + message_len;
    if frame_len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: frame_len,
            max: MAX_FRAME_LEN,
        });
    }
    out.reserve(4 + frame_len - payload.len());
    out.put_u32(frame_len as u32);
    if id != 0 {
        encode_key(ID_TAG, WireType::Varint, out);
        encode_varint(id, out);
    }
    encode_key(field.body_tag, WireType::LengthDelimited, out);
    encode_varint(message_len as u64, out);
    out.put_slice(&rest);
    encode_key(field.data_tag, WireType::LengthDelimited, out);
    encode_varint(payload.len() as u64, out);
    Ok(Some(payload))
}

/// The body's message alone: what follows its key and length in an envelope.
fn message_of(body: &crate::messages::Body) -> Vec<u8> {
    let mut with_key = Vec::with_capacity(body.encoded_len());
    body.encode(&mut with_key);
    let mut rest = &with_key[..];
    // The key, then the length: varints both, as prost just wrote them.
    for _ in 0..2 {
        let _ = prost::encoding::decode_varint(&mut rest);
    }
    rest.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_all, encode_all};
    use crate::messages::{Body, FileChunk, OutputChunk, StdinData};

    fn bodies(data: Bytes) -> Vec<Body> {
        vec![
            Body::Output(OutputChunk {
                stream: 2,
                data: data.clone(),
                eof: true,
            }),
            Body::Output(OutputChunk {
                stream: 0,
                data: data.clone(),
                eof: false,
            }),
            Body::StdinData(StdinData { data: data.clone() }),
            Body::FileChunk(FileChunk { data, eof: true }),
        ]
    }

    #[tokio::test]
    async fn bulk_frames_written_around_their_payload_decode_as_the_frames_sent() {
        for len in [BULK_PAYLOAD_MIN, 200_000, super::super::MAX_CHUNK_LEN] {
            let data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
            for id in [0, 1, 300, u64::MAX] {
                let frames: Vec<Envelope> = bodies(data.clone())
                    .into_iter()
                    .map(|body| Envelope::new(id, body))
                    .collect();
                let bytes = encode_all(frames.clone()).unwrap();
                let (decoded, err) = decode_all(&bytes);
                assert!(err.is_none(), "{err:?}");
                assert_eq!(decoded, frames, "payload of {len}, id {id}");
            }
        }
    }

    #[tokio::test]
    async fn small_and_bulk_frames_keep_their_order_and_small_ones_their_encoding() {
        let small = Envelope::new(
            5,
            Body::Output(OutputChunk {
                stream: 1,
                data: Bytes::from_static(b"line\n"),
                eof: false,
            }),
        );
        let bulk = Envelope::new(
            5,
            Body::FileChunk(FileChunk {
                data: vec![9u8; BULK_PAYLOAD_MIN + 1].into(),
                eof: false,
            }),
        );
        let frames = vec![small.clone(), bulk, small.clone()];
        let bytes = encode_all(frames.clone()).unwrap();
        assert_eq!(decode_all(&bytes).0, frames);
        let mut alone = BytesMut::new();
        FrameCodec::new().encode(small, &mut alone).unwrap();
        assert_eq!(&bytes[..alone.len()], &alone[..], "prost's own bytes");
    }

    #[tokio::test]
    async fn a_payload_past_the_frame_limit_is_refused_before_anything_is_written() {
        let frame = Envelope::new(
            1,
            Body::StdinData(StdinData {
                data: vec![0u8; MAX_FRAME_LEN].into(),
            }),
        );
        let mut out = Vec::new();
        let mut writer = FrameWriter::new(&mut out);
        assert!(matches!(
            writer.feed(frame).await,
            Err(FrameError::TooLarge { .. })
        ));
        writer.flush().await.unwrap();
        assert!(out.is_empty());
    }
}
