//! Frames on their way to the host, and what must happen once one is on the wire.

use krunbox_protocol::messages::{Body, Envelope};
use tokio::sync::mpsc;

/// A frame queued for a connection's writer.
pub struct Outgoing {
    pub frame: Envelope,
    /// Power off (or exit, in host mode) with this status once the frame is written: the host
    /// must receive a one-shot command's exit status or a shutdown acknowledgement first.
    pub then_shutdown: Option<i32>,
}

/// Sends the frames of one operation.
#[derive(Clone)]
pub struct Reply {
    tx: mpsc::Sender<Outgoing>,
    id: u64,
}

impl Reply {
    pub fn new(tx: mpsc::Sender<Outgoing>, id: u64) -> Self {
        Self { tx, id }
    }

    /// Queues a frame; false when the connection is gone.
    pub async fn send(&self, body: Body) -> bool {
        self.queue(body, None).await
    }

    /// Queues a frame after which the agent shuts down with `status`.
    pub async fn send_then_shutdown(&self, body: Body, status: i32) -> bool {
        self.queue(body, Some(status)).await
    }

    async fn queue(&self, body: Body, then_shutdown: Option<i32>) -> bool {
        let frame = Envelope::new(self.id, body);
        self.tx
            .send(Outgoing {
                frame,
                then_shutdown,
            })
            .await
            .is_ok()
    }
}
