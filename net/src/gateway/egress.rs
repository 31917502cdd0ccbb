//! A guest's new connection decided: the policy asked, the audit record written, the host side
//! connected (or the secrets' interceptor or the CA's port served instead).

use std::net::SocketAddrV4;

use smoltcp::wire::{IpAddress, IpListenEndpoint};
use tracing::warn;

use crate::audit::{self, Verdict};
use crate::config::GATEWAY_IP;
pub use crate::conn::host_side;
use crate::conn::{new_tcp_socket, Conn};
use crate::inspect::Flow;
use crate::policy::is_host_address;
use crate::secrets::TRUST_PORT;

use super::{Gateway, Job};

impl Gateway {
    /// Decides a new guest connection; true if its host side is to connect (the SYN waits).
    pub(super) fn decide_syn(&mut self, flow: Flow, syn: &[u8]) -> bool {
        let dest = host_side(flow.dest);
        let open = self.guest_connections();
        if open >= self.limits.max_guest_connections {
            if self.connection_cap.first() {
                audit::record(
                    "tcp",
                    flow.guest,
                    dest,
                    &[],
                    Verdict::Reset,
                    &format!(
                        "the guest has {open} connections open, the gateway's cap; new ones \
                         are reset until one closes"
                    ),
                );
            }
            return false;
        }
        if flow.dest == SocketAddrV4::new(GATEWAY_IP, TRUST_PORT) {
            if let Some(interceptor) = &self.interceptor {
                let pem = interceptor.ca_pem();
                self.serve_ca(flow, syn, pem);
                return true;
            }
        }
        let now = std::time::Instant::now();
        let decision =
            self.config
                .policy
                .decide(dest, &self.names, is_host_address(*dest.ip()), now);
        let names: Vec<&str> = self.names.names_of(*dest.ip(), now).collect();
        let (verdict, rule) = audit::of(&decision);
        audit::record("tcp", flow.guest, dest, &names, verdict, rule);
        if !decision.is_allowed() {
            return false;
        }
        self.connecting.insert(flow);
        self.jobs.push(Job::Connect {
            flow,
            dest,
            syn: syn.to_vec(),
        });
        true
    }

    /// A listening socket for the guest's `flow`, its host side `conn`.
    pub(super) fn add_guest_socket(&mut self, flow: Flow, conn: Conn) {
        let mut socket = new_tcp_socket();
        let endpoint = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(*flow.dest.ip())),
            port: flow.dest.port(),
        };
        if let Err(e) = socket.listen(endpoint) {
            warn!("listening for {}: {e}", flow.dest);
            return;
        }
        let handle = self.sockets.add(socket);
        self.conns.insert(handle, conn);
        self.flows.insert(flow, handle);
    }

    /// Answers the guest's connection to the CA service with the sandbox CA's certificate.
    pub(super) fn serve_ca(&mut self, flow: Flow, syn: &[u8], pem: String) {
        use tokio::io::AsyncWriteExt;
        audit::record(
            "tcp",
            flow.guest,
            flow.dest,
            &[],
            Verdict::Answer,
            "the sandbox's CA certificate",
        );
        let (near, mut far) = tokio::io::duplex(pem.len().max(1));
        tokio::spawn(async move {
            let _ = far.write_all(pem.as_bytes()).await;
            let _ = far.shutdown().await;
        });
        let label = format!("{} -> the CA service", flow.guest);
        let conn = Conn::attach_local(near, label, Some(flow), self.wake.clone());
        self.add_guest_socket(flow, conn);
        self.device.rx.push_back(syn.to_vec());
    }
}
