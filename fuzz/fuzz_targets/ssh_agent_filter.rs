//! Feeds arbitrary bytes, in reads of arbitrary sizes, to the SSH agent filter exactly as the
//! host's relay does: it must never panic, must split the same messages whatever the reads,
//! must keep every message within the limit, and must forward nothing but list and sign.
#![no_main]

use krunbox_protocol::ssh_agent::{
    decide, message_type, take_message, Decision, FrameError, MAX_MESSAGE, REQUEST_IDENTITIES,
    SIGN_REQUEST,
};
use libfuzzer_sys::fuzz_target;

/// The messages `data` splits into, read `chunk` bytes at a time, and the error that ended it.
fn split(data: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut buffer = Vec::new();
    let mut messages = Vec::new();
    for piece in data.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match take_message(&mut buffer) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(err) => return (messages, Some(err)),
            }
        }
        assert!(buffer.len() < 4 + MAX_MESSAGE, "buffered past the limit");
    }
    (messages, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let whole = split(data, data.len().max(1));
    let pieces = split(data, usize::from(chunk).max(1));
    assert_eq!(whole, pieces, "reads of {chunk} bytes split differently");
    for message in &whole.0 {
        let length = u32::from_be_bytes([message[0], message[1], message[2], message[3]]);
        assert_eq!(length as usize + 4, message.len());
        assert!(message.len() <= 4 + MAX_MESSAGE && message.len() > 4);
        let forwarded = decide(message) == Decision::Forward;
        let listing_or_signing = matches!(
            message_type(message),
            Some(REQUEST_IDENTITIES | SIGN_REQUEST)
        );
        assert_eq!(forwarded, listing_or_signing);
    }
});
