//! The gateway's DNS server: parsing the guest's queries and building answers.
//!
//! Only what a stub resolver needs: one question per query, A records answered from the host's
//! resolver (or the gateway's own names), AAAA answered with no records (the guest network is
//! IPv4), other types refused as not implemented. Resolution and policy live in the gateway;
//! this module only speaks the wire format (through `simple-dns`): the guest's queries and
//! our replies, and the query to and answer from an upstream DNS server
//! ([`crate::resolver`]).

use std::net::Ipv4Addr;
use std::time::Duration;

use simple_dns::rdata::{RData, A};
use simple_dns::{Packet, PacketFlag, CLASS, QTYPE, RCODE, TYPE};

/// Seconds the guest may cache an answer the gateway gives itself (`--add-host`, its own
/// name) or from a resolver that tells no TTL (the host's `getaddrinfo`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// What the guest asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// IPv4 addresses of the name.
    A(String),
    /// IPv6 addresses of the name.
    Aaaa(String),
    /// Anything else.
    Other(String),
}

impl Question {
    /// The name asked about (lower case, no trailing dot).
    pub fn name(&self) -> &str {
        match self {
            Self::A(name) | Self::Aaaa(name) | Self::Other(name) => name,
        }
    }
}

/// A query that cannot be answered at all (not even with an error), so it is dropped.
#[derive(Debug, thiserror::Error)]
#[error("malformed DNS query: {0}")]
pub struct MalformedQuery(String);

/// Parses a query; an error for anything but a single-question query.
pub fn parse_query(bytes: &[u8]) -> Result<Question, MalformedQuery> {
    let packet = Packet::parse(bytes).map_err(|e| MalformedQuery(e.to_string()))?;
    if packet.has_flags(PacketFlag::RESPONSE) {
        return Err(MalformedQuery("a response, not a query".into()));
    }
    let [question] = packet.questions.as_slice() else {
        return Err(MalformedQuery(format!(
            "{} questions (one expected)",
            packet.questions.len()
        )));
    };
    let name = question
        .qname
        .to_string()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    Ok(match question.qtype {
        QTYPE::TYPE(TYPE::A) => Question::A(name),
        QTYPE::TYPE(TYPE::AAAA) => Question::Aaaa(name),
        _ => Question::Other(name),
    })
}

/// How the gateway answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// These addresses (possibly none: "no such record"), cacheable for `ttl`.
    Addresses {
        /// The addresses, as the guest sees them.
        addresses: Vec<Ipv4Addr>,
        /// How long the guest may cache them.
        ttl: Duration,
    },
    /// The name does not exist (or the policy hides it).
    NoSuchName,
    /// The query type is not supported.
    NotImplemented,
    /// The host's resolver failed.
    ServerFailure,
}

/// The reply to `query` (which [`parse_query`] accepted).
pub fn build_reply(query: &[u8], answer: &Answer) -> Result<Vec<u8>, MalformedQuery> {
    let packet = Packet::parse(query).map_err(|e| MalformedQuery(e.to_string()))?;
    let mut reply = Packet::new_reply(packet.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if packet.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    let Some(question) = packet.questions.first() else {
        return Err(MalformedQuery("no question".into()));
    };
    reply.questions.push(question.clone());
    match answer {
        Answer::Addresses { addresses, ttl } => {
            let ttl = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
            for address in addresses {
                reply.answers.push(simple_dns::ResourceRecord::new(
                    question.qname.clone(),
                    CLASS::IN,
                    ttl,
                    RData::A(A::from(*address)),
                ));
            }
        }
        Answer::NoSuchName => *reply.rcode_mut() = RCODE::NameError,
        Answer::NotImplemented => *reply.rcode_mut() = RCODE::NotImplemented,
        Answer::ServerFailure => *reply.rcode_mut() = RCODE::ServerFailure,
    }
    reply
        .build_bytes_vec_compressed()
        .map_err(|e| MalformedQuery(e.to_string()))
}

/// What an upstream DNS server answered for an A query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAnswer {
    /// The A records of the answer section (possibly none), and the smallest TTL among the
    /// answer section's records.
    Addresses {
        /// The addresses, in the server's order, each once.
        addresses: Vec<Ipv4Addr>,
        /// The smallest TTL of the answer section (zero if it had none).
        ttl: Duration,
    },
    /// NXDOMAIN.
    NoSuchName,
    /// Another error code (SERVFAIL, REFUSED, ...).
    Failed(String),
}

/// A recursive A query for `name` with `id`, to an upstream server.
pub fn build_query(id: u16, name: &str) -> Result<Vec<u8>, MalformedQuery> {
    let qname = simple_dns::Name::new(name).map_err(|e| MalformedQuery(e.to_string()))?;
    let mut packet = Packet::new_query(id);
    packet.set_flags(PacketFlag::RECURSION_DESIRED);
    packet.questions.push(simple_dns::Question::new(
        qname,
        QTYPE::TYPE(TYPE::A),
        simple_dns::QCLASS::CLASS(CLASS::IN),
        false,
    ));
    packet
        .build_bytes_vec()
        .map_err(|e| MalformedQuery(e.to_string()))
}

/// Parses an upstream server's reply to the query with `id` (untrusted bytes: whoever
/// controls the name's zone shapes them).
pub fn parse_answer(bytes: &[u8], id: u16) -> Result<UpstreamAnswer, MalformedQuery> {
    let packet = Packet::parse(bytes).map_err(|e| MalformedQuery(e.to_string()))?;
    if !packet.has_flags(PacketFlag::RESPONSE) || packet.id() != id {
        return Err(MalformedQuery("not the reply to our query".into()));
    }
    match packet.rcode() {
        RCODE::NoError => {}
        RCODE::NameError => return Ok(UpstreamAnswer::NoSuchName),
        other => return Ok(UpstreamAnswer::Failed(format!("{other:?}"))),
    }
    let mut addresses = Vec::new();
    let mut ttl = None::<u32>;
    for record in &packet.answers {
        ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
        if let RData::A(a) = &record.rdata {
            let ip = Ipv4Addr::from(a.address);
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    Ok(UpstreamAnswer::Addresses {
        addresses,
        ttl: Duration::from_secs(u64::from(ttl.unwrap_or(0))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::{Name, Question as DnsQuestion};

    fn query(name: &str, qtype: TYPE) -> Vec<u8> {
        let mut packet = Packet::new_query(0x1234);
        packet.set_flags(PacketFlag::RECURSION_DESIRED);
        packet.questions.push(DnsQuestion::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(qtype),
            simple_dns::QCLASS::CLASS(CLASS::IN),
            false,
        ));
        packet.build_bytes_vec().expect("query")
    }

    #[test]
    fn answers_a_queries_with_addresses() {
        let q = query("Example.COM", TYPE::A);
        assert_eq!(
            parse_query(&q).expect("parse"),
            Question::A("example.com".into())
        );
        let ip: Ipv4Addr = "93.184.216.34".parse().expect("ip");
        let answer = Answer::Addresses {
            addresses: vec![ip],
            ttl: Duration::from_secs(42),
        };
        let reply = build_reply(&q, &answer).expect("reply");
        let reply = Packet::parse(&reply).expect("parse reply");
        assert_eq!(reply.answers[0].ttl, 42);
        assert_eq!(reply.id(), 0x1234);
        assert!(reply.has_flags(PacketFlag::RESPONSE));
        assert_eq!(reply.rcode(), RCODE::NoError);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.answers[0].rdata, RData::A(A::from(ip)));
    }

    #[test]
    fn error_answers_and_other_types() {
        let q = query("nope.example", TYPE::AAAA);
        assert_eq!(
            parse_query(&q).expect("parse"),
            Question::Aaaa("nope.example".into())
        );
        let reply = build_reply(&q, &Answer::NoSuchName).expect("reply");
        assert_eq!(
            Packet::parse(&reply).expect("parse").rcode(),
            RCODE::NameError
        );
        let mx = query("example.com", TYPE::MX);
        assert_eq!(
            parse_query(&mx).expect("parse"),
            Question::Other("example.com".into())
        );
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(parse_query(&[1, 2, 3]).is_err());
        assert!(parse_query(&[]).is_err());
        let mut packet = Packet::new_reply(1);
        packet.questions.clear();
        let bytes = packet.build_bytes_vec().expect("bytes");
        assert!(parse_query(&bytes).is_err());
    }

    #[test]
    fn upstream_answers_give_addresses_and_the_smallest_ttl() {
        let query = build_query(77, "evil.test").expect("query");
        let ips = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(169, 254, 169, 254)];
        let reply = build_reply(
            &query,
            &Answer::Addresses {
                addresses: ips.to_vec(),
                ttl: Duration::from_secs(5),
            },
        )
        .expect("reply");
        assert_eq!(
            parse_answer(&reply, 77).expect("answer"),
            UpstreamAnswer::Addresses {
                addresses: ips.to_vec(),
                ttl: Duration::from_secs(5)
            }
        );
        assert!(parse_answer(&reply, 78).is_err(), "another query's reply");
        assert!(parse_answer(&query, 77).is_err(), "a query is no reply");
        let nx = build_reply(&query, &Answer::NoSuchName).expect("reply");
        assert_eq!(
            parse_answer(&nx, 77).expect("nx"),
            UpstreamAnswer::NoSuchName
        );
        let fail = build_reply(&query, &Answer::ServerFailure).expect("reply");
        assert!(matches!(
            parse_answer(&fail, 77),
            Ok(UpstreamAnswer::Failed(_))
        ));
    }
}
