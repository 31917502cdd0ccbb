//! Chunk buffers kept for reuse, process-wide.
//!
//! Bulk data is read into a buffer of a chunk's size that becomes a frame's payload as it is,
//! and the writer writes it from there; a received bulk frame is read into one too. A fresh
//! buffer per chunk is costly in the guest's agent: musl's malloc maps every allocation above
//! its threshold (about 128 KiB) on its own, so each chunk paid an `mmap`, a page fault per
//! 4 KiB and an `munmap`. A buffer whose bytes have been written comes back here instead
//! ([`recycle`]) and the next chunk is read into it ([`chunk_buffer`]). At most [`KEPT`]
//! buffers wait here, none larger than [`KEPT_MAX`]; the rest are freed.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

use super::MAX_CHUNK_LEN;

/// Buffers kept for reuse: enough for the chunks in flight of a few streams (2 MiB).
const KEPT: usize = 8;
/// A buffer's size: a chunk and its frame around it (prefix, ids, tags and lengths).
pub const BUFFER_LEN: usize = MAX_CHUNK_LEN + 64;

/// Buffers larger than this are not kept: a peer's frames may be up to 1 MiB each, and a pool
/// of those would hold 8 MiB and make every chunk read into one look short.
const KEPT_MAX: usize = 2 * BUFFER_LEN;

/// Free buffers.
struct Pool(Mutex<Vec<BytesMut>>);

/// The process's pool.
static POOL: Pool = Pool::new();

impl Pool {
    const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<BytesMut>> {
        // A panic while holding the lock leaves a valid Vec: keep using it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self) -> BytesMut {
        self.free()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(BUFFER_LEN))
    }

    fn give_back(&self, mut buffer: BytesMut) {
        buffer.clear();
        if buffer.capacity() > KEPT_MAX {
            return;
        }
        // From the start of the allocation again (a payload starts past its frame's header).
        if !buffer.try_reclaim(BUFFER_LEN) {
            return;
        }
        let mut free = self.free();
        if free.len() < KEPT {
            free.push(buffer);
        }
    }
}

/// An empty buffer of at least [`BUFFER_LEN`] bytes' capacity, reused when one is free.
pub fn chunk_buffer() -> BytesMut {
    POOL.take()
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
pub fn recycle_buffer(buffer: BytesMut) {
    POOL.give_back(buffer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of the test's own (the process's is shared with every other test).
    fn pool() -> Pool {
        Pool::new()
    }

    #[test]
    fn a_written_chunk_s_buffer_is_read_into_again() {
        let pool = pool();
        let mut buffer = pool.take();
        buffer.extend_from_slice(&[1; 1000]);
        let address = buffer.as_ptr() as usize;
        let Ok(buffer) = buffer.freeze().try_into_mut() else {
            panic!("unique")
        };
        pool.give_back(buffer);
        let again = pool.take();
        assert_eq!(again.as_ptr() as usize, address);
        assert!(again.is_empty() && again.capacity() >= BUFFER_LEN);
    }

    #[test]
    fn a_received_payload_gives_back_its_whole_frame_buffer() {
        let pool = pool();
        let mut frame = pool.take();
        frame.extend_from_slice(&[3; 300]);
        let start = frame.as_ptr() as usize;
        let payload = frame.freeze().slice(20..);
        let Ok(payload) = payload.try_into_mut() else {
            panic!("unique")
        };
        pool.give_back(payload);
        let again = pool.take();
        assert_eq!(again.as_ptr() as usize, start);
        assert!(again.capacity() >= BUFFER_LEN);
    }

    #[test]
    fn a_payload_still_shared_small_or_huge_is_not_kept() {
        let pool = pool();
        let mut buffer = pool.take();
        buffer.extend_from_slice(&[2; 10]);
        let payload = buffer.freeze();
        let other = payload.clone();
        assert!(payload.try_into_mut().is_err(), "shared: not recycled");
        assert_eq!(
            &other[..],
            [2; 10],
            "still readable through the other handle"
        );
        pool.give_back(BytesMut::with_capacity(16));
        pool.give_back(BytesMut::with_capacity(4 * BUFFER_LEN));
        assert!(pool.free().is_empty());
    }
}
