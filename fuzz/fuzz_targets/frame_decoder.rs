//! Feeds arbitrary bytes to the frame reader exactly as a connection would: it must never
//! panic, and every frame it accepts must re-encode, by the codec and by the connection's
//! writer (which writes a bulk payload after a header of its own), to bytes that decode to
//! the same value.
#![no_main]

use krunbox_protocol::frame::{decode_all, encode_all, FrameCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util_shim::encode;

fuzz_target!(|data: &[u8]| {
    let (frames, _err) = decode_all(data);
    for frame in frames {
        let bytes = encode(&mut FrameCodec::new(), frame.clone());
        let (again, err) = decode_all(&bytes);
        assert!(err.is_none(), "re-encoded frame fails to decode: {err:?}");
        assert_eq!(again, vec![frame.clone()]);
        let written = encode_all(vec![frame.clone()]).expect("a decoded frame fits the limit");
        let (again, err) = decode_all(&written);
        assert!(err.is_none(), "a written frame fails to decode: {err:?}");
        assert_eq!(again, vec![frame]);
    }
});

mod tokio_util_shim {
    use krunbox_protocol::frame::FrameCodec;
    use krunbox_protocol::messages::Envelope;

    /// Encodes through the public codec (re-exported trait from tokio-util).
    pub fn encode(codec: &mut FrameCodec, frame: Envelope) -> Vec<u8> {
        let mut buf = krunbox_protocol::frame::BytesMut::new();
        krunbox_protocol::frame::Encoder::encode(codec, frame, &mut buf)
            .expect("a decoded frame fits the limit");
        buf.to_vec()
    }
}
