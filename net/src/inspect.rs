//! The gateway's own look at each guest frame before smoltcp sees it: is it a new TCP
//! connection (a SYN, decided by the policy first), or a packet the gateway does not
//! forward (logged)? Frames are the guest's bytes: every parse here is checked.

use std::net::SocketAddrV4;

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};

use crate::config::GATEWAY_IP;

/// A guest TCP connection: guest address → destination as the guest addressed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The guest's end.
    pub guest: SocketAddrV4,
    /// The destination, as the guest addressed it (10.0.2.2 is the host's loopback).
    pub dest: SocketAddrV4,
}

/// The IPv4 packet in an Ethernet frame, if it carries one.
fn ipv4_packet(frame: &[u8]) -> Option<Ipv4Packet<&[u8]>> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    Ipv4Packet::new_checked(ethernet.payload()).ok()
}

/// The flow of a TCP SYN (not SYN-ACK) in an Ethernet frame.
pub fn tcp_syn(frame: &[u8]) -> Option<Flow> {
    let ip = ipv4_packet(frame)?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    if !tcp.syn() || tcp.ack() {
        return None;
    }
    Some(Flow {
        guest: SocketAddrV4::new(ip.src_addr(), tcp.src_port()),
        dest: SocketAddrV4::new(ip.dst_addr(), tcp.dst_port()),
    })
}

/// A guest packet the gateway does not forward (UDP other than to its DNS server, ICMP):
/// protocol name and destination (port 0 for ICMP).
pub fn unforwarded(frame: &[u8]) -> Option<(&'static str, SocketAddrV4)> {
    let ip = ipv4_packet(frame)?;
    let dest = ip.dst_addr();
    if dest.is_broadcast() || dest.is_multicast() {
        return None;
    }
    match ip.next_header() {
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(ip.payload()).ok()?;
            let to_dns = dest == GATEWAY_IP && udp.dst_port() == 53;
            (!to_dns).then(|| ("udp", SocketAddrV4::new(dest, udp.dst_port())))
        }
        IpProtocol::Icmp if dest != GATEWAY_IP => Some(("icmp", SocketAddrV4::new(dest, 0))),
        _ => None,
    }
}

/// A guest's IPv4 packet to `dest` carrying `payload_len` bytes of `protocol`, framed as the
/// gateway receives it (Ethernet, IPv4, checksums right); `fill` writes the payload (its
/// header included) into the slice it is given. How tests and the fuzzers make their input.
pub fn guest_ipv4_frame(
    dest: std::net::Ipv4Addr,
    protocol: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{EthernetAddress, EthernetRepr, Ipv4Repr};
    let ip = Ipv4Repr {
        src_addr: crate::config::GUEST_IP,
        dst_addr: dest,
        next_header: protocol,
        payload_len,
        hop_limit: 64,
    };
    let ethernet = EthernetRepr {
        src_addr: EthernetAddress(crate::config::GUEST_MAC),
        dst_addr: EthernetAddress(crate::config::GATEWAY_MAC),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut frame = vec![0; ethernet.buffer_len() + ip.buffer_len() + payload_len];
    let mut eth = EthernetFrame::new_unchecked(&mut frame);
    ethernet.emit(&mut eth);
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &ChecksumCapabilities::default());
    fill(packet.payload_mut());
    frame
}

/// A guest's UDP datagram from port 40000 to `dest:port` ([`guest_ipv4_frame`]).
pub fn guest_udp_frame(dest: std::net::Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpAddress, UdpRepr};
    let udp = UdpRepr {
        src_port: 40000,
        dst_port: port,
    };
    let length = udp.header_len() + payload.len();
    guest_ipv4_frame(dest, IpProtocol::Udp, length, |bytes| {
        udp.emit(
            &mut UdpPacket::new_unchecked(bytes),
            &IpAddress::Ipv4(crate::config::GUEST_IP),
            &IpAddress::Ipv4(dest),
            payload.len(),
            |buf| buf.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn udp_other_than_dns_is_reported_as_not_forwarded() {
        let ntp = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(
            unforwarded(&guest_udp_frame(ntp, 123, b"x")),
            Some(("udp", SocketAddrV4::new(ntp, 123)))
        );
        assert_eq!(unforwarded(&guest_udp_frame(GATEWAY_IP, 53, b"x")), None);
        assert_eq!(unforwarded(&[0u8; 10]), None);
    }
}
