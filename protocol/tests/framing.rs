//! Frame codec round trips and limits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use bytes::{BufMut, BytesMut};
use krunbox_protocol::frame::{decode_all, FrameCodec, FrameError, MAX_FRAME_LEN};
use krunbox_protocol::messages::*;
use tokio_util::codec::{Decoder, Encoder};

fn encode(frames: &[Envelope]) -> BytesMut {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    for frame in frames {
        codec.encode(frame.clone(), &mut buf).expect("encode");
    }
    buf
}

#[test]
fn frames_round_trip_in_order() {
    let frames = vec![
        Envelope::new(1, Body::Ping(Ping { nonce: 1 })),
        Envelope::new(
            2,
            Body::Output(OutputChunk {
                stream: OutputStream::Stdout as i32,
                data: vec![7u8; 60_000].into(),
                eof: false,
            }),
        ),
        Envelope::new(
            2,
            Body::Exit(ExitStatus {
                outcome: Some(Outcome::Code(0)),
                timed_out: false,
            }),
        ),
    ];
    let (decoded, err) = decode_all(&encode(&frames));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(decoded, frames);
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let frame = Envelope::new(
        4,
        Body::StdinData(StdinData {
            data: b"abcdef".to_vec().into(),
        }),
    );
    let bytes = encode(std::slice::from_ref(&frame));
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    for (i, byte) in bytes.iter().enumerate() {
        buf.put_u8(*byte);
        let got = codec.decode(&mut buf).expect("no error on a partial frame");
        if i + 1 < bytes.len() {
            assert!(got.is_none(), "frame complete too early at byte {i}");
        } else {
            assert_eq!(got, Some(frame.clone()));
        }
    }
}

#[test]
fn oversized_length_prefix_is_refused_before_buffering() {
    let mut bytes = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 16]);
    let (frames, err) = decode_all(&bytes);
    assert!(frames.is_empty());
    match err {
        Some(FrameError::TooLarge { len, max }) => {
            assert_eq!(len, MAX_FRAME_LEN + 1);
            assert_eq!(max, MAX_FRAME_LEN);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn oversized_frames_are_refused_when_sending() {
    let huge = Envelope::new(
        1,
        Body::StdinData(StdinData {
            data: vec![0u8; MAX_FRAME_LEN + 10].into(),
        }),
    );
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    assert!(matches!(
        codec.encode(huge, &mut buf),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(buf.is_empty(), "nothing half-written");
}

#[test]
fn garbage_body_is_a_decode_error_not_a_panic() {
    let (frames, err) = decode_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    assert!(frames.is_empty());
    assert!(matches!(err, Some(FrameError::Decode(_))), "{err:?}");
}

#[test]
fn valid_frames_before_garbage_are_still_delivered() {
    let mut bytes = encode(&[Envelope::new(1, Body::Ping(Ping { nonce: 3 }))]).to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 2, 0x0a, 0xff]);
    let (frames, err) = decode_all(&bytes);
    assert_eq!(frames.len(), 1);
    assert!(err.is_some());
}
