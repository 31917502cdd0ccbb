//! Per-operation flow control (credit windows), used by both the client and the agent.
//!
//! The sender of a data stream holds a [`SendWindow`]: it may only send frames it has credit
//! for, and waits otherwise. The receiver holds a [`RecvWindow`]: it counts what arrives (a
//! peer overrunning its credit is a protocol violation) and, as the consumer takes frames,
//! returns credit in batches with a `WindowUpdate` frame.
//!
//! Credit is counted in [`frame_cost`]: a data frame costs its payload plus [`FRAME_CHARGE`].
//! The charge bounds the number of frames in flight as well as their bytes, so a peer sending
//! empty or one-byte frames can queue at most `INITIAL_WINDOW / FRAME_CHARGE` (16 Ki) of them
//! at the receiver, not a million.

use std::sync::Mutex;

use tokio::sync::Notify;

/// Credit every data stream starts with, in each direction.
pub const INITIAL_WINDOW: u32 = 1024 * 1024;

/// Credit is returned once this much was consumed, to keep update frames rare.
pub const UPDATE_THRESHOLD: u32 = INITIAL_WINDOW / 4;

/// What every data frame costs on top of its payload. Queuing a frame costs the receiver a
/// few hundred bytes whatever its payload (the envelope, a channel slot, a buffer handle), so
/// a window of [`INITIAL_WINDOW`] holds at most 16 Ki frames: a few MiB per operation.
pub const FRAME_CHARGE: u32 = 64;

/// The credit one data frame of `payload` bytes takes.
///
/// ```
/// use krunbox_protocol::flow::{frame_cost, FRAME_CHARGE};
/// assert_eq!(frame_cost(0), FRAME_CHARGE);
/// assert_eq!(frame_cost(100), 100 + FRAME_CHARGE);
/// assert_eq!(frame_cost(usize::MAX), u32::MAX);
/// ```
pub fn frame_cost(payload: usize) -> u32 {
    u32::try_from(payload)
        .unwrap_or(u32::MAX)
        .saturating_add(FRAME_CHARGE)
}

#[derive(Debug)]
struct Credit {
    available: u64,
    closed: bool,
}

/// The sending side's credit for one stream.
///
/// ```
/// # tokio_test_block(async {
/// use krunbox_protocol::flow::SendWindow;
/// use krunbox_protocol::flow::FRAME_CHARGE;
/// let window = SendWindow::new(FRAME_CHARGE + 10);
/// // One frame of at most 10 bytes: its charge is taken too.
/// assert_eq!(window.acquire(64).await, Some(10));
/// window.grant(FRAME_CHARGE + 5);
/// assert_eq!(window.acquire(3).await, Some(3));
/// window.close();
/// assert_eq!(window.acquire(3).await, None);
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct SendWindow {
    credit: Mutex<Credit>,
    changed: Notify,
}

impl SendWindow {
    /// A window holding `initial` bytes of credit.
    pub fn new(initial: u32) -> Self {
        Self {
            credit: Mutex::new(Credit {
                available: u64::from(initial),
                closed: false,
            }),
            changed: Notify::new(),
        }
    }

    /// Waits for credit for one frame and takes it: [`FRAME_CHARGE`] plus up to `want` bytes
    /// of payload, at least one. Returns the payload allowed; `None` once the window is closed
    /// (the operation ended or the connection dropped).
    ///
    /// The frame's charge is spent even if it carries less (an end-of-stream frame carries
    /// nothing); unused payload credit goes back with [`grant`](Self::grant).
    pub async fn acquire(&self, want: usize) -> Option<usize> {
        let charge = u64::from(FRAME_CHARGE);
        loop {
            let notified = self.changed.notified();
            {
                let mut credit = self.lock();
                if credit.closed {
                    return None;
                }
                if credit.available > charge {
                    let payload = (credit.available - charge).min(want.max(1) as u64);
                    credit.available -= charge + payload;
                    return Some(payload as usize);
                }
            }
            notified.await;
        }
    }

    /// Adds credit granted by the peer.
    pub fn grant(&self, bytes: u32) {
        {
            let mut credit = self.lock();
            credit.available = credit.available.saturating_add(u64::from(bytes));
        }
        self.changed.notify_waiters();
    }

    /// Wakes every waiter with `None`; used when the operation or connection ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Credit> {
        // A poisoned lock only means another thread panicked mid-update of two integers;
        // the values are still usable.
        self.credit.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The receiving side's account of one stream.
///
/// ```
/// use krunbox_protocol::flow::{RecvWindow, INITIAL_WINDOW, UPDATE_THRESHOLD};
/// use krunbox_protocol::flow::frame_cost;
/// let mut window = RecvWindow::new();
/// assert!(window.received(1000).is_ok());
/// assert_eq!(window.consumed(1000), None);
/// let big = UPDATE_THRESHOLD as usize;
/// assert_eq!(window.consumed(big), Some(frame_cost(1000) + frame_cost(big)));
/// assert!(window.received(INITIAL_WINDOW as usize * 2).is_err());
/// ```
#[derive(Debug)]
pub struct RecvWindow {
    outstanding: u64,
    unacknowledged: u32,
}

/// The peer sent more payload than it had credit for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer overran its flow-control window by {excess} bytes")]
pub struct WindowOverrun {
    /// Bytes beyond the granted credit.
    pub excess: u64,
}

impl RecvWindow {
    /// A fresh account: the peer holds [`INITIAL_WINDOW`] bytes of credit.
    pub fn new() -> Self {
        Self {
            outstanding: u64::from(INITIAL_WINDOW),
            unacknowledged: 0,
        }
    }

    /// Records one data frame of `payload` bytes arriving.
    pub fn received(&mut self, payload: usize) -> Result<(), WindowOverrun> {
        let bytes = u64::from(frame_cost(payload));
        if bytes > self.outstanding {
            return Err(WindowOverrun {
                excess: bytes - self.outstanding,
            });
        }
        self.outstanding -= bytes;
        Ok(())
    }

    /// Records one data frame of `payload` bytes consumed; returns the credit to grant the
    /// peer now, if any.
    pub fn consumed(&mut self, payload: usize) -> Option<u32> {
        self.unacknowledged = self.unacknowledged.saturating_add(frame_cost(payload));
        if self.unacknowledged < UPDATE_THRESHOLD {
            return None;
        }
        let grant = std::mem::take(&mut self.unacknowledged);
        self.outstanding += u64::from(grant);
        Some(grant)
    }
}

impl Default for RecvWindow {
    fn default() -> Self {
        Self::new()
    }
}
