//! Reading frames from a connection, as both ends do from their reader task.
//!
//! Small frames are read ahead into one buffer and decoded from it ([`FrameCodec`]). A bulk
//! frame (announcing [`BULK_PAYLOAD_MIN`] bytes or more) is read into a chunk buffer of its
//! own ([`super::pool`]): its payload is decoded without a copy and keeps only that buffer
//! alive, and the receiver can hand the buffer back ([`super::recycle`]) when it has written
//! the bytes. A shared read buffer would instead be given up, and a new one allocated, for
//! every chunk still held by its receiver.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::Decoder;

use super::BULK_PAYLOAD_MIN;
use super::{announced_len, decode_frame, pool, FrameCodec, FrameError, PREFIX_LEN};
use crate::messages::Envelope;

/// How much one read of small frames asks for.
const READ_AHEAD: usize = 64 * 1024;

/// Frames from a byte stream, in order.
pub struct FrameReader<R> {
    input: R,
    /// Bytes read and not yet decoded.
    buffered: BytesMut,
    codec: FrameCodec,
    /// An error was returned: the stream is out of step, and nothing more is read from it.
    failed: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of frames from `input`.
    pub fn new(input: R) -> Self {
        Self {
            input,
            buffered: BytesMut::new(),
            codec: FrameCodec::new(),
            failed: false,
        }
    }

    /// The next frame; `None` when the stream ends between frames. An error (a frame past
    /// the limit, one that does not decode, the stream ending inside a frame) ends the
    /// stream: nothing after it can be trusted to be in step, so later calls return `None`.
    ///
    /// Not cancel-safe: a call dropped while it waits inside a frame loses that frame and
    /// the stream's place (each end reads from one task that awaits it to the end).
    pub async fn next(&mut self) -> Option<Result<Envelope, FrameError>> {
        if self.failed {
            return None;
        }
        let next = self.read_next().await;
        self.failed = matches!(next, Some(Err(_)));
        next
    }

    async fn read_next(&mut self) -> Option<Result<Envelope, FrameError>> {
        loop {
            match announced_len(&self.buffered) {
                Err(err) => return Some(Err(err)),
                // A frame that long may carry a bulk payload: a buffer of its own.
                Ok(Some(len)) if len >= BULK_PAYLOAD_MIN => return Some(self.read_bulk(len).await),
                Ok(_) => {}
            }
            match self.codec.decode(&mut self.buffered) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(err) => return Some(Err(err)),
            }
            if self.buffered.capacity() - self.buffered.len() < READ_AHEAD {
                self.buffered.reserve(READ_AHEAD);
            }
            match self.input.read_buf(&mut self.buffered).await {
                Ok(0) if self.buffered.is_empty() => return None,
                Ok(0) => return Some(Err(ended_inside_a_frame())),
                Ok(_) => {}
                Err(err) => return Some(Err(err.into())),
            }
        }
    }

    /// The frame of `len` bytes whose prefix starts the buffer, read into a buffer of its own:
    /// what was read ahead of it is copied there, the rest is read straight into it.
    async fn read_bulk(&mut self, len: usize) -> Result<Envelope, FrameError> {
        self.buffered.advance(PREFIX_LEN);
        let mut frame = if len <= pool::BUFFER_LEN {
            pool::chunk_buffer()
        } else {
            BytesMut::with_capacity(len)
        };
        frame.reserve(len);
        let ahead = self.buffered.len().min(len);
        frame.extend_from_slice(&self.buffered[..ahead]);
        self.buffered.advance(ahead);
        while frame.len() < len {
            let missing = (len - frame.len()) as u64;
            if (&mut self.input).take(missing).read_buf(&mut frame).await? == 0 {
                return Err(ended_inside_a_frame());
            }
        }
        decode_frame(frame.freeze())
    }
}

fn ended_inside_a_frame() -> FrameError {
    FrameError::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the connection ended inside a frame",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_all, Encoder, MAX_CHUNK_LEN, MAX_FRAME_LEN};
    use crate::messages::{Body, FileChunk, OutputChunk, Ping, StdinData};
    use bytes::Bytes;

    fn frames() -> Vec<Envelope> {
        let bulk = |n: usize| Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        vec![
            Envelope::new(1, Body::Ping(Ping { nonce: 7 })),
            Envelope::new(
                2,
                Body::Output(OutputChunk {
                    stream: 1,
                    data: bulk(MAX_CHUNK_LEN),
                    eof: false,
                }),
            ),
            Envelope::new(2, Body::StdinData(StdinData { data: bulk(100) })),
            Envelope::new(
                3,
                Body::FileChunk(FileChunk {
                    data: bulk(BULK_PAYLOAD_MIN),
                    eof: true,
                }),
            ),
            Envelope::new(
                4,
                Body::StdinData(StdinData {
                    data: bulk(MAX_FRAME_LEN - 64),
                }),
            ),
        ]
    }

    /// Reads every frame of `bytes`, handed over `step` bytes per read.
    async fn read_all(bytes: Vec<u8>, step: usize) -> (Vec<Envelope>, Option<FrameError>) {
        let (mut tx, rx) = tokio::io::duplex(step);
        tokio::spawn(async move {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut tx, &bytes).await;
        });
        let mut reader = FrameReader::new(rx);
        let mut got = Vec::new();
        while let Some(frame) = reader.next().await {
            match frame {
                Ok(frame) => got.push(frame),
                Err(err) => return (got, Some(err)),
            }
        }
        (got, None)
    }

    #[tokio::test]
    async fn frames_of_both_writers_arrive_whole_however_the_bytes_are_split() {
        let mut by_codec = BytesMut::new();
        for frame in frames() {
            FrameCodec::new().encode(frame, &mut by_codec).unwrap();
        }
        let by_writer = encode_all(frames()).unwrap();
        for bytes in [by_codec.to_vec(), by_writer] {
            for step in [13, 4096, 300_000] {
                let (got, err) = read_all(bytes.clone(), step).await;
                assert!(err.is_none(), "{err:?} with reads of {step}");
                assert_eq!(got, frames(), "reads of {step}");
            }
        }
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_frame_or_past_the_limit_is_an_error() {
        let mut bytes = BytesMut::new();
        FrameCodec::new()
            .encode(frames().swap_remove(1), &mut bytes)
            .unwrap();
        let cut = bytes[..bytes.len() - 1].to_vec();
        let (got, err) = read_all(cut, 4096).await;
        assert!(got.is_empty());
        assert!(matches!(err, Some(FrameError::Io(_))), "{err:?}");

        let huge = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        let (_, err) = read_all(huge, 4096).await;
        assert!(matches!(err, Some(FrameError::TooLarge { .. })), "{err:?}");

        let (got, err) = read_all(Vec::new(), 4096).await;
        assert!(got.is_empty() && err.is_none());
    }
}
