//! Per-operation flow control (credit windows), used by both the client and the agent.
//!
//! The sender of a data stream holds a [`SendWindow`]: it may only send as many payload bytes
//! as it has credit for, and waits otherwise. The receiver holds a [`RecvWindow`]: it counts
//! what arrives (a peer overrunning its credit is a protocol violation) and, as the consumer
//! takes data, returns credit in batches with a `WindowUpdate` frame.

use std::sync::Mutex;

use tokio::sync::Notify;

/// Credit every data stream starts with, in each direction.
pub const INITIAL_WINDOW: u32 = 1024 * 1024;

/// Credit is returned once this much was consumed, to keep update frames rare.
pub const UPDATE_THRESHOLD: u32 = INITIAL_WINDOW / 4;

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
/// let window = SendWindow::new(10);
/// assert_eq!(window.acquire(64).await, Some(10));
/// window.grant(5);
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

    /// Waits for credit and takes up to `want` bytes of it; `None` once the window is closed
    /// (the operation ended or the connection dropped).
    pub async fn acquire(&self, want: usize) -> Option<usize> {
        loop {
            let notified = self.changed.notified();
            {
                let mut credit = self.lock();
                if credit.closed {
                    return None;
                }
                if credit.available > 0 {
                    let take = credit.available.min(want as u64);
                    credit.available -= take;
                    return Some(take as usize);
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
/// let mut window = RecvWindow::new();
/// assert!(window.received(1000).is_ok());
/// assert_eq!(window.consumed(1000), None);
/// assert_eq!(window.consumed(UPDATE_THRESHOLD), Some(UPDATE_THRESHOLD + 1000));
/// assert!(window.received(INITIAL_WINDOW * 2).is_err());
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

    /// Records `bytes` of payload arriving.
    pub fn received(&mut self, bytes: u32) -> Result<(), WindowOverrun> {
        let bytes = u64::from(bytes);
        if bytes > self.outstanding {
            return Err(WindowOverrun {
                excess: bytes - self.outstanding,
            });
        }
        self.outstanding -= bytes;
        Ok(())
    }

    /// Records `bytes` consumed; returns the credit to grant the peer now, if any.
    pub fn consumed(&mut self, bytes: u32) -> Option<u32> {
        self.unacknowledged = self.unacknowledged.saturating_add(bytes);
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
