//! A tiny real DNS server with fixed answers, for tests that need a resolver whose answer
//! they choose (a hostile one: an allowed name that resolves to the host's loopback). Point
//! the gateway at it with `NetConfig::dns_server` (`KRUNBOX_DNS_SERVER=IP:PORT`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use crate::dns::{build_reply, parse_query, Answer, Question};

/// Serves `records` (lower-case name → A records, answered with `ttl`; any other name is
/// NXDOMAIN) on a UDP socket bound to `127.0.0.1:0`, from a thread, for the process's life.
/// Returns the server's address.
pub fn serve(
    records: HashMap<String, Vec<Ipv4Addr>>,
    ttl: Duration,
) -> std::io::Result<SocketAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let address = socket.local_addr()?;
    std::thread::spawn(move || {
        let mut buffer = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buffer) {
            let query = &buffer[..n];
            let answer = match parse_query(query) {
                Ok(Question::A(name)) => match records.get(&name) {
                    Some(addresses) => Answer::Addresses {
                        addresses: addresses.clone(),
                        ttl,
                    },
                    None => Answer::NoSuchName,
                },
                Ok(_) => Answer::NotImplemented,
                Err(_) => continue,
            };
            if let Ok(reply) = build_reply(query, &answer) {
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    Ok(address)
}
