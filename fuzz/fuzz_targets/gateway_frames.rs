//! Feeds arbitrary bytes to the gateway as the VMM's socket carries a guest's frames: the
//! framing decoder (`read_frame`) splits them, and each frame goes through everything the
//! gateway does with a guest frame — its SYN and unforwarded checks, smoltcp, the DNS
//! server — offline (no host connection or resolution is started). IPv4/TCP/UDP checksums
//! are filled in first, so the mutations reach past smoltcp's checksum checks. It must never
//! panic, and every frame it sends back must fit the guest's MTU.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use krunbox_net::config::MAX_FRAME;
use krunbox_net::framing::read_frame;
use krunbox_net::{Gateway, NetConfig};
use libfuzzer_sys::fuzz_target;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut stream)) = data.split_first() else {
        return;
    };
    let mut gateway = Gateway::new(config(mode));
    loop {
        // Reading from a byte slice never waits: one poll finishes the read.
        let mut read = pin!(read_frame(&mut stream));
        let Poll::Ready(result) = read.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        else {
            panic!("reading from memory waited");
        };
        let Ok(Some(mut frame)) = result else { break };
        fill_checksums(&mut frame);
        for reply in gateway.handle_frame_offline(frame) {
            assert!(
                reply.len() <= MAX_FRAME,
                "a {}-byte frame to the guest",
                reply.len()
            );
        }
    }
});

/// Open policy for even modes; an allowlist with names, a network and a fixed host for odd.
fn config(mode: u8) -> NetConfig {
    let mut config = NetConfig::default();
    if mode % 2 == 1 {
        for rule in ["fuzz.test", "*.allowed.test:443"] {
            config.policy.allow_hosts.push(rule.parse().expect("rule"));
        }
        config
            .policy
            .allow_nets
            .push("203.0.113.0/24:80".parse().expect("rule"));
        config
            .hosts
            .push("fuzz.test:127.0.0.1".parse().expect("host"));
    }
    config
}

/// Makes an IPv4 frame's checksums right, whatever the fuzzer did to them.
fn fill_checksums(frame: &mut [u8]) {
    let Ok(mut ethernet) = EthernetFrame::new_checked(frame) else {
        return;
    };
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(ethernet.payload_mut()) else {
        return;
    };
    ip.fill_checksum();
    let (src, dst) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    match ip.next_header() {
        IpProtocol::Tcp => {
            if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
                tcp.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut udp) = UdpPacket::new_checked(ip.payload_mut()) {
                udp.fill_checksum(&src, &dst);
            }
        }
        _ => {}
    }
}
