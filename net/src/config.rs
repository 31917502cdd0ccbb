//! What one guest network is: addresses, the egress policy, published ports, static names.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::policy::EgressPolicy;

/// The guest's address.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The gateway: the gateway's DNS server, and the host's loopback as the guest sees it.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The guest network's prefix length.
pub const PREFIX_LEN: u8 = 24;
/// The MAC address of the guest's virtio-net device.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The gateway's MAC address.
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x02];
/// The name the gateway's DNS server answers with [`GATEWAY_IP`] (the host's loopback).
pub const HOST_ALIAS: &str = "host.krunbox.internal";
/// The frame size the gateway accepts (Ethernet MTU 1500 plus header).
pub const MAX_FRAME: usize = 1514;

/// A host port that forwards to a guest port (`-p [HOSTIP:]HOSTPORT:GUESTPORT[/tcp]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// Where the host listens.
    pub host: SocketAddr,
    /// The guest's port.
    pub guest_port: u16,
}

/// A `-p` or `--add-host` value that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Not `[HOSTIP:]HOSTPORT:GUESTPORT[/tcp]`.
    #[error("{0:?}: expected [HOSTIP:]HOSTPORT:GUESTPORT[/tcp], e.g. 8080:80 or 0.0.0.0:8080:80")]
    BadPublish(String),
    /// Only TCP is forwarded.
    #[error("{0:?}: only tcp ports can be published")]
    NotTcp(String),
    /// Not `NAME:IP`.
    #[error("{0:?}: expected NAME:IPV4, e.g. db.internal:192.168.1.20")]
    BadHost(String),
}

impl FromStr for PublishedPort {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadPublish(text.to_owned());
        let spec = match text.rsplit_once('/') {
            Some((spec, "tcp")) => spec,
            Some(_) => return Err(SpecError::NotTcp(text.to_owned())),
            None => text,
        };
        let (host_part, guest_port) = spec.rsplit_once(':').ok_or_else(bad)?;
        let guest_port = parse_port(guest_port).ok_or_else(bad)?;
        let (host_ip, host_port) = match host_part.rsplit_once(':') {
            Some((ip, port)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                (ip.parse::<IpAddr>().map_err(|_| bad())?, port)
            }
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), host_part),
        };
        let host_port = parse_port(host_port).ok_or_else(bad)?;
        Ok(Self {
            host: SocketAddr::new(host_ip, host_port),
            guest_port,
        })
    }
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

/// A name the gateway's DNS server answers itself (`--add-host NAME:IP`); the address is a
/// host-side one (127.0.0.1 reaches the host's loopback, if the policy allows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticHost {
    /// Lower-case name.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

impl FromStr for StaticHost {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadHost(text.to_owned());
        let (name, ip) = text.rsplit_once(':').ok_or_else(bad)?;
        let ip = ip.parse::<Ipv4Addr>().map_err(|_| bad())?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(bad());
        }
        Ok(Self { name, ip })
    }
}

/// Everything the gateway of one VM needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// What the guest may reach.
    pub policy: EgressPolicy,
    /// Host ports forwarded into the guest.
    pub publish: Vec<PublishedPort>,
    /// Names answered by the gateway itself.
    pub hosts: Vec<StaticHost>,
    /// The DNS server that resolves the guest's queries instead of the host's resolver (a
    /// test and advanced knob: `KRUNBOX_DNS_SERVER=IP:PORT`); its answers' TTLs are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_server: Option<SocketAddr>,
    /// Secrets whose values the gateway puts in requests to their hosts (`--secret`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::secrets::Secret>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs() {
        let p: PublishedPort = "8080:80".parse().expect("spec");
        assert_eq!(p.host, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(p.guest_port, 80);
        let p: PublishedPort = "0.0.0.0:8443:443/tcp".parse().expect("spec");
        assert_eq!(p.host, "0.0.0.0:8443".parse().expect("addr"));
        let p: PublishedPort = "[::1]:9000:90".parse().expect("spec");
        assert_eq!(p.host, "[::1]:9000".parse().expect("addr"));
        assert!(matches!(
            "53:53/udp".parse::<PublishedPort>(),
            Err(SpecError::NotTcp(_))
        ));
        for bad in ["80", "x:80", "8080:0", "1.2.3:80:80", "70000:80", ""] {
            assert!(bad.parse::<PublishedPort>().is_err(), "{bad}");
        }
    }

    #[test]
    fn static_hosts() {
        let h: StaticHost = "DB.internal:192.168.1.20".parse().expect("spec");
        assert_eq!(h.name, "db.internal");
        assert!("db.internal".parse::<StaticHost>().is_err());
        assert!("db internal:1.2.3.4".parse::<StaticHost>().is_err());
        assert!("db:::1".parse::<StaticHost>().is_err());
    }
}
