//! krunbox's user-mode guest network.
//!
//! The guest gets one virtio-net card whose other end is a stream socket of the VMM (QEMU's
//! `-netdev stream`, libkrun's `krun_add_net_unixstream`); on the other side of that socket is
//! [`Gateway`], in a process of ours (`krunbox __net`). It is the guest's only peer: it
//! answers ARP and DNS, terminates the guest's TCP connections, applies the
//! [`EgressPolicy`](policy::EgressPolicy) to each, and makes the allowed ones as ordinary
//! sockets of its own. Published ports (`-p`) are listeners of that process that open TCP
//! connections into the guest. Because the policy sits in a process we control and the guest
//! has no other route out, the guest cannot reach what the policy denies: the host's
//! loopback, private networks, link-local and cloud metadata addresses by default.
//!
//! The guest's side: 10.0.2.15/24, gateway and DNS server 10.0.2.2 ([`config`]), set up by
//! guest-init from `krunbox.net=`. The gateway address stands for the host's loopback
//! (`host.krunbox.internal`), reachable only where the policy allows it. IPv4 and TCP only;
//! other UDP than DNS, ICMP and IPv6 are not forwarded.

pub mod audit;
pub mod config;
pub mod conn;
pub mod device;
pub mod dns;
pub mod framing;
pub mod gateway;
pub mod inspect;
pub mod limits;
pub mod log_cap;
pub mod policy;
pub mod resolver;
pub mod secrets;
pub mod static_dns;

pub use config::{NetConfig, PublishedPort};
pub use gateway::Gateway;
pub use limits::Limits;

use tokio::net::TcpListener;

/// A failure of the guest network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A published port could not be bound.
    #[error("publishing {address}: {source}")]
    Publish {
        /// The host address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The VMM's socket failed.
    #[error(transparent)]
    Framing(#[from] framing::FramingError),
    /// The socket for the VMM could not be created or accepted on.
    #[error("the VMM's network socket {path}: {source}")]
    Socket {
        /// The socket's path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An internal task failed.
    #[error("the network's reader task: {0}")]
    Task(String),
}

/// Binds the published ports' listeners (before the VM starts, so a port in use is an error
/// the user sees at once).
pub async fn bind_published(
    config: &NetConfig,
) -> Result<Vec<(TcpListener, PublishedPort)>, NetError> {
    let mut listeners = Vec::with_capacity(config.publish.len());
    for port in &config.publish {
        let listener = TcpListener::bind(port.host)
            .await
            .map_err(|source| NetError::Publish {
                address: port.host,
                source,
            })?;
        listeners.push((listener, *port));
    }
    Ok(listeners)
}
