//! What one guest may hold in the gateway: the caps that keep a hostile guest (or a local user
//! hammering a published port) from exhausting the host's memory, threads or file descriptors.
//!
//! Every number is a documented constant; [`Limits`] carries them so tests can shorten the
//! timeouts. The CLI has no flag for them: they are generous for real workloads.

use std::time::Duration;

/// Guest-initiated TCP connections open at once (host connect pending, handshaking or
/// established). A SYN past the cap is reset and the refusal is logged.
pub const MAX_GUEST_CONNECTIONS: usize = 256;
/// Connections through published ports open at once; a connection past the cap is closed on
/// accept (another local user must not be able to exhaust the gateway through `-p`).
pub const MAX_INBOUND_CONNECTIONS: usize = 256;
/// How long the host side of an allowed connection may take to connect (the guest's SYN
/// waits, unanswered, meanwhile).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take from the gateway's accepting it (host side connected) to
/// an established TCP connection with the guest; a guest that never completes its handshake
/// is reset after this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A TCP connection that moves no byte in either direction for this long is reset on the
/// guest's side and closed on the host's.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// DNS queries the gateway resolves at once; a query past the cap is answered SERVFAIL.
pub const MAX_PENDING_DNS: usize = 64;
/// How long the host's resolver may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The caps of one gateway; [`Limits::default`] is the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`MAX_GUEST_CONNECTIONS`].
    pub max_guest_connections: usize,
    /// See [`MAX_INBOUND_CONNECTIONS`].
    pub max_inbound_connections: usize,
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`MAX_PENDING_DNS`].
    pub max_pending_dns: usize,
    /// See [`RESOLVE_TIMEOUT`].
    pub resolve_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_guest_connections: MAX_GUEST_CONNECTIONS,
            max_inbound_connections: MAX_INBOUND_CONNECTIONS,
            connect_timeout: CONNECT_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_pending_dns: MAX_PENDING_DNS,
            resolve_timeout: RESOLVE_TIMEOUT,
        }
    }
}
