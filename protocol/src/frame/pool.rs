//! Chunk buffers kept for reuse, process-wide.
//!
//! Bulk data is read into a buffer of a chunk's size that becomes a frame's payload as it is,
//! and the writer writes it from there; a received bulk frame is read into one too. A fresh buffer per chunk is costly in the guest's
//! agent: musl's malloc maps every allocation above its threshold (about 128 KiB) on its own,
//! so each chunk paid an `mmap`, a page fault per 4 KiB and an `munmap`. A buffer whose frame
//! has been written comes back here instead ([`recycle`]) and the next chunk is read into it
//! ([`chunk_buffer`]). At most [`KEPT`] buffers wait here; the rest are freed.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

use super::MAX_CHUNK_LEN;

/// Buffers kept for reuse: enough for the chunks in flight of a few streams (2 MiB).
const KEPT: usize = 8;
/// A buffer's size: a chunk and its frame around it (prefix, ids, tags and lengths).
pub const BUFFER_LEN: usize = MAX_CHUNK_LEN + 64;

static FREE: Mutex<Vec<BytesMut>> = Mutex::new(Vec::new());

fn free() -> std::sync::MutexGuard<'static, Vec<BytesMut>> {
    // A panic while holding the lock leaves a valid Vec: keep using it.
    FREE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An empty buffer of at least [`BUFFER_LEN`] bytes' capacity, reused when one is free.
pub fn chunk_buffer() -> BytesMut {
    free()
        .pop()
        .unwrap_or_else(|| BytesMut::with_capacity(BUFFER_LEN))
}

/// Takes back a payload once its bytes are written (to the connection, a file, a pipe) if
/// nothing else refers to its buffer and the buffer is a whole chunk's; anything else is
/// dropped as usual.
pub fn recycle(payload: Bytes) {
    if let Ok(buffer) = payload.try_into_mut() {
        recycle_buffer(buffer);
    }
}

/// [`recycle`] for a buffer that never became a payload (a short read that was copied out).
pub fn recycle_buffer(mut buffer: BytesMut) {
    buffer.clear();
    // From the start of the allocation again (a payload starts past its frame's header).
    if !buffer.try_reclaim(BUFFER_LEN) {
        return;
    }
    let mut free = free();
    if free.len() < KEPT {
        free.push(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_chunk_s_buffer_is_read_into_again() {
        let mut buffer = chunk_buffer();
        buffer.extend_from_slice(&[1; 1000]);
        let address = buffer.as_ptr() as usize;
        recycle(buffer.freeze());
        // Other tests of this process may take it first: look among all that are free.
        let reused: Vec<BytesMut> = (0..KEPT).map(|_| chunk_buffer()).collect();
        assert!(reused.iter().any(|b| b.as_ptr() as usize == address));
        assert!(reused
            .iter()
            .all(|b| b.is_empty() && b.capacity() >= BUFFER_LEN));
    }

    #[test]
    fn a_received_payload_gives_back_its_whole_frame_buffer() {
        let mut frame = chunk_buffer();
        frame.extend_from_slice(&[3; 300]);
        let start = frame.as_ptr() as usize;
        let payload = frame.freeze().slice(20..);
        recycle(payload);
        let reused: Vec<BytesMut> = (0..KEPT).map(|_| chunk_buffer()).collect();
        assert!(reused
            .iter()
            .any(|b| b.as_ptr() as usize == start && b.capacity() >= BUFFER_LEN));
    }

    #[test]
    fn a_payload_still_shared_or_small_is_not_taken() {
        let mut buffer = chunk_buffer();
        buffer.extend_from_slice(&[2; 10]);
        let payload = buffer.freeze();
        let other = payload.clone();
        recycle(payload);
        assert_eq!(
            &other[..],
            [2; 10],
            "still readable through the other handle"
        );
        recycle(Bytes::from_static(b"static"));
        recycle_buffer(BytesMut::with_capacity(16));
        assert!(free().iter().all(|b| b.capacity() >= BUFFER_LEN));
    }
}
