//! How the gateway resolves a guest's query on the host: the host's own resolver
//! (`getaddrinfo`, which tells no TTL), or — a test and advanced knob — a DNS server the CLI
//! user names (`NetConfig::dns_server`, from `KRUNBOX_DNS_SERVER=IP:PORT`), asked over UDP,
//! whose answers' TTLs are used.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::dns::{self, UpstreamAnswer, DEFAULT_TTL};

/// A resolver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// IPv4 addresses, in the resolver's order, each once.
    pub addresses: Vec<Ipv4Addr>,
    /// How long the answer is valid (not yet clamped).
    pub ttl: Duration,
}

/// A resolver's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name does not exist (NXDOMAIN to the guest).
    #[error("no such name")]
    NoSuchName,
    /// The resolver failed (SERVFAIL to the guest).
    #[error("{0}")]
    Failed(String),
}

/// Resolves `name` with `server`, or with the host's resolver when `None`, within `timeout`.
pub async fn resolve(
    name: &str,
    server: Option<SocketAddr>,
    timeout: Duration,
) -> Result<Resolved, ResolveError> {
    let lookup = async {
        match server {
            Some(server) => ask_server(name, server).await,
            None => ask_host(name).await,
        }
    };
    tokio::time::timeout(timeout, lookup)
        .await
        .unwrap_or_else(|_| Err(ResolveError::Failed("the resolver timed out".into())))
}

async fn ask_host(name: &str) -> Result<Resolved, ResolveError> {
    let addresses = tokio::net::lookup_host((name, 0)).await.map_err(|e| {
        let text = e.to_string();
        // getaddrinfo's EAI_NONAME / EAI_NODATA texts: the name has no address.
        if text.contains("not known") || text.contains("No address") {
            ResolveError::NoSuchName
        } else {
            ResolveError::Failed(text)
        }
    })?;
    // getaddrinfo repeats each address per socket type; keep the first of each, in order.
    let mut seen = HashSet::new();
    let addresses = addresses
        .filter_map(|a| match a {
            SocketAddr::V4(a) => Some(*a.ip()),
            SocketAddr::V6(_) => None,
        })
        .filter(|ip| seen.insert(*ip))
        .collect();
    Ok(Resolved {
        addresses,
        ttl: DEFAULT_TTL,
    })
}

async fn ask_server(name: &str, server: SocketAddr) -> Result<Resolved, ResolveError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        ResolveError::Failed(format!("the DNS server {server}: {what}: {e}"))
    };
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| failed("bind", &e))?;
    // Only the server's datagrams reach a connected socket.
    socket
        .connect(server)
        .await
        .map_err(|e| failed("connect", &e))?;
    let id = fastrand::u16(..);
    let query = dns::build_query(id, name).map_err(|e| failed("query", &e))?;
    socket.send(&query).await.map_err(|e| failed("send", &e))?;
    let mut buffer = vec![0; 4096];
    loop {
        let n = socket
            .recv(&mut buffer)
            .await
            .map_err(|e| failed("receive", &e))?;
        // A datagram that is not the reply to this query (a stale or forged one) is ignored.
        let Ok(answer) = dns::parse_answer(&buffer[..n], id) else {
            continue;
        };
        return match answer {
            UpstreamAnswer::Addresses { addresses, ttl } => Ok(Resolved { addresses, ttl }),
            UpstreamAnswer::NoSuchName => Err(ResolveError::NoSuchName),
            UpstreamAnswer::Failed(code) => Err(failed("answered", &code)),
        };
    }
}
