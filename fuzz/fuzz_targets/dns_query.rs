//! Feeds arbitrary bytes to the gateway's DNS server: as a guest's query (the parser, each
//! kind of reply, and the whole answer path through a gateway, offline: nothing is resolved)
//! and as an upstream server's answer. It must never panic; a reply to an accepted query must
//! parse back with the query's id and question.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Duration;

use krunbox_net::config::GATEWAY_IP;
use krunbox_net::dns::{build_reply, parse_answer, parse_query, Answer};
use krunbox_net::inspect::guest_udp_frame;
use krunbox_net::{Gateway, NetConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(question) = parse_query(data) {
        let answers = [
            Answer::Addresses {
                addresses: vec![Ipv4Addr::new(93, 184, 216, 34), GATEWAY_IP],
                ttl: Duration::from_secs(60),
            },
            Answer::NoSuchName,
            Answer::NotImplemented,
            Answer::ServerFailure,
        ];
        let query = simple_dns::Packet::parse(data).expect("parse_query accepted it");
        for answer in &answers {
            let Ok(reply) = build_reply(data, answer) else {
                continue;
            };
            let reply = simple_dns::Packet::parse(&reply).expect("our reply parses");
            assert_eq!(reply.id(), query.id());
            assert_eq!(reply.questions.len(), 1);
            let name = reply.questions[0].qname.to_string();
            assert_eq!(
                name.trim_end_matches('.').to_ascii_lowercase(),
                question.name()
            );
        }
    }
    let id = data
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let _ = parse_answer(data, id);
    if data.len() <= 1400 {
        let mut config = NetConfig::default();
        config
            .policy
            .allow_hosts
            .push("fuzz.test".parse().expect("rule"));
        config
            .hosts
            .push("fuzz.test:127.0.0.1".parse().expect("host"));
        let mut gateway = Gateway::new(config);
        let _ = gateway.handle_frame_offline(guest_udp_frame(GATEWAY_IP, 53, data));
    }
});
