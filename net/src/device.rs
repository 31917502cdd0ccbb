//! The gateway's side of the guest's network card, as smoltcp sees it: frames queued in
//! memory. The gateway moves them to and from the VMM's stream socket.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::config::MAX_FRAME;

/// Ethernet frames waiting to be processed (`rx`) or sent to the guest (`tx`).
#[derive(Debug, Default)]
pub struct QueueDevice {
    /// From the guest, oldest first.
    pub rx: VecDeque<Vec<u8>>,
    /// To the guest, oldest first.
    pub tx: VecDeque<Vec<u8>>,
}

/// One received frame.
pub struct RxToken(Vec<u8>);

/// Room for one frame to send.
pub struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps
    }
}

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push_back(frame);
        result
    }
}
