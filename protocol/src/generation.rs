//! Protocol generations and the handshake that agrees one.
//!
//! A generation is a frozen set of messages and field tags (`tests/generations.rs` holds each
//! one's golden encodings). The host opens every connection with a
//! [`Hello`](crate::messages::Hello) naming the range it speaks; the agent answers with the
//! newest generation in both ranges. An old agent baked into an image keeps working with a
//! newer host as long as the host still speaks the agent's generation.
//!
//! - Generation 1: the messages frozen in `tests/generations/gen1.txt`; flow control counts
//!   payload only.
//! - Generation 2: the same messages; flow control charges every data frame
//!   [`FRAME_CHARGE`](crate::flow::FRAME_CHARGE) on top of its payload. The host no longer
//!   speaks generation 1: under it a hostile agent could queue a million empty frames per
//!   operation, and a generation-1 agent would overrun a charged window. Such an agent is
//!   refused at the handshake with [`NoCommonGeneration`] rather than failing mid-stream.

use std::ops::RangeInclusive;

/// The newest generation this build speaks.
pub const CURRENT_GENERATION: u32 = 2;
/// The oldest generation this build still speaks.
pub const OLDEST_GENERATION: u32 = 2;

/// The generations this build speaks.
pub const SUPPORTED: RangeInclusive<u32> = OLDEST_GENERATION..=CURRENT_GENERATION;

/// The two sides have no generation in common.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no common protocol generation: host speaks {host_min}..={host_max}, agent speaks {agent_min}..={agent_max}")]
pub struct NoCommonGeneration {
    /// Oldest the host speaks.
    pub host_min: u32,
    /// Newest the host speaks.
    pub host_max: u32,
    /// Oldest the agent speaks.
    pub agent_min: u32,
    /// Newest the agent speaks.
    pub agent_max: u32,
}

/// The newest generation in both ranges.
///
/// ```
/// use krunbox_protocol::generation::negotiate;
/// assert_eq!(negotiate(1..=3, 1..=2), Ok(2));
/// assert!(negotiate(3..=4, 1..=2).is_err());
/// ```
pub fn negotiate(
    host: RangeInclusive<u32>,
    agent: RangeInclusive<u32>,
) -> Result<u32, NoCommonGeneration> {
    let newest = (*host.end()).min(*agent.end());
    let oldest = (*host.start()).max(*agent.start());
    if newest >= oldest && !host.is_empty() && !agent.is_empty() {
        Ok(newest)
    } else {
        Err(NoCommonGeneration {
            host_min: *host.start(),
            host_max: *host.end(),
            agent_min: *agent.start(),
            agent_max: *agent.end(),
        })
    }
}
