//! Published ports (`-p`): a host connection opened into the guest, within the inbound cap.

use std::net::SocketAddr;

use smoltcp::wire::IpAddress;
use tokio::net::TcpStream;
use tracing::warn;

use crate::audit::{self, Verdict};
use crate::config::{PublishedPort, GATEWAY_IP, GUEST_IP};
use crate::conn::{new_tcp_socket, Conn};

use super::Gateway;

impl Gateway {
    /// A published port's connection: opened into the guest, unless the cap is reached.
    pub(super) fn inbound(&mut self, stream: TcpStream, peer: SocketAddr, port: PublishedPort) {
        let open = self.conns.len() - self.flows.len();
        if open >= self.limits.max_inbound_connections {
            if self.inbound_cap.first() {
                audit::record(
                    "published",
                    peer,
                    port.host,
                    &[],
                    Verdict::Reset,
                    &format!("{open} published connections open, the gateway's cap"),
                );
            }
            return;
        }
        let mut socket = new_tcp_socket();
        let local_port = self.next_ephemeral_port();
        let remote = (IpAddress::Ipv4(GUEST_IP), port.guest_port);
        let local = (IpAddress::Ipv4(GATEWAY_IP), local_port);
        match socket.connect(self.iface.context(), remote, local) {
            Ok(()) => {
                let handle = self.sockets.add(socket);
                let label = format!("{peer} -> {} -> guest:{}", port.host, port.guest_port);
                audit::record(
                    "published",
                    peer,
                    port.host,
                    &[],
                    Verdict::Allow,
                    &format!("published to the guest's port {}", port.guest_port),
                );
                let conn = Conn::attach(stream, label, None, self.wake.clone());
                self.conns.insert(handle, conn);
            }
            Err(e) => warn!("published port {}: {e}", port.host),
        }
    }

    pub(super) fn next_ephemeral_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if port == u16::MAX { 49152 } else { port + 1 };
        port
    }
}
