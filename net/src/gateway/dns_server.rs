//! The gateway's DNS server: the guest's queries decided by the policy, answered from the
//! CLI user's names or handed to a resolver (at most [`Limits::max_pending_dns`] at once),
//! and the resolver's answers screened before the guest sees them.
//!
//! [`Limits::max_pending_dns`]: crate::limits::Limits::max_pending_dns

use std::net::Ipv4Addr;

use smoltcp::socket::udp;
use smoltcp::wire::IpEndpoint;
use tracing::debug;

use super::{guest_side, Gateway, Job};
use crate::audit::{self, Verdict};
use crate::config::HOST_ALIAS;
use crate::dns::{self, Answer, Question, DEFAULT_TTL};
use crate::policy::{answer_lifetime, is_host_address, AnswerUse, Decision};
use crate::resolver::{ResolveError, Resolved};

impl Gateway {
    /// The guest's answer from a resolver's: internal addresses are refused (and logged with
    /// the flag that allows them), public ones recorded for the answer's lifetime.
    pub(super) fn screen_resolved(
        &mut self,
        name: &str,
        result: Result<Resolved, ResolveError>,
    ) -> Answer {
        let resolved = match result {
            Ok(resolved) => resolved,
            Err(e) => {
                audit::record_dns(name, Verdict::Answer, &e.to_string());
                return match e {
                    ResolveError::NoSuchName => Answer::NoSuchName,
                    ResolveError::Failed(_) => Answer::ServerFailure,
                };
            }
        };
        let lifetime = answer_lifetime(resolved.ttl);
        let now = std::time::Instant::now();
        let mut given = Vec::new();
        for ip in resolved.addresses {
            match self
                .config
                .policy
                .screen_answer(name, ip, is_host_address(ip))
            {
                Ok(AnswerUse::Public) => {
                    if !self.names.record(name, ip, now + lifetime, now) {
                        audit::record_dns(
                            name,
                            Verdict::Reset,
                            &format!(
                                "{ip}: too many answers remembered; it authorizes nothing \
                                 until older ones expire"
                            ),
                        );
                    }
                    given.push(ip);
                }
                Ok(AnswerUse::AllowedInternal) => given.push(ip),
                Err(why) => audit::record_dns(name, Verdict::Deny, &why.to_string()),
            }
        }
        audit::record_dns(
            name,
            Verdict::Answer,
            &format!("{given:?} for {} s", lifetime.as_secs()),
        );
        Answer::Addresses {
            addresses: given.into_iter().map(guest_side).collect(),
            ttl: lifetime,
        }
    }

    pub(super) fn serve_dns(&mut self) {
        let mut queries = Vec::new();
        let socket = self.sockets.get_mut::<udp::Socket>(self.dns);
        while let Ok((payload, meta)) = socket.recv() {
            queries.push((payload.to_vec(), meta.endpoint));
        }
        for (query, from) in queries {
            self.answer_dns(query, from);
        }
    }

    fn answer_dns(&mut self, query: Vec<u8>, from: IpEndpoint) {
        let question = match dns::parse_query(&query) {
            Ok(question) => question,
            Err(e) => {
                debug!("dns from {from}: {e}");
                return;
            }
        };
        let name = question.name().to_owned();
        let (fixed, decision) = if name == HOST_ALIAS {
            let why = Decision::Allow("the gateway's own name".into());
            (Some(Ipv4Addr::LOCALHOST), why)
        } else {
            let fixed = self.config.hosts.iter().find(|h| h.name == name);
            (fixed.map(|h| h.ip), self.config.policy.decide_name(&name))
        };
        if !decision.is_allowed() {
            let (verdict, rule) = audit::of(&decision);
            audit::record_dns(&name, verdict, rule);
            self.reply_dns(from, &query, &Answer::NoSuchName);
            return;
        }
        match (question, fixed) {
            (Question::A(_), Some(ip)) => {
                // The CLI user's own mapping (--add-host): trusted, whatever the address.
                self.names.record_fixed(&name, ip);
                audit::record_dns(&name, Verdict::Answer, &format!("{ip} (fixed: --add-host)"));
                let answer = Answer::Addresses {
                    addresses: vec![guest_side(ip)],
                    ttl: DEFAULT_TTL,
                };
                self.reply_dns(from, &query, &answer);
            }
            (Question::A(_), None) if self.pending_dns >= self.limits.max_pending_dns => {
                if self.dns_cap.first() {
                    audit::record_dns(
                        &name,
                        Verdict::Reset,
                        &format!(
                            "SERVFAIL: {} queries are being resolved, the gateway's cap",
                            self.pending_dns
                        ),
                    );
                }
                self.reply_dns(from, &query, &Answer::ServerFailure);
            }
            (Question::A(_), None) => {
                self.pending_dns += 1;
                self.jobs.push(Job::Resolve {
                    to: from,
                    query,
                    name,
                });
            }
            (Question::Aaaa(_), _) => {
                let none = Answer::Addresses {
                    addresses: Vec::new(),
                    ttl: DEFAULT_TTL,
                };
                self.reply_dns(from, &query, &none);
            }
            (Question::Other(_), _) => self.reply_dns(from, &query, &Answer::NotImplemented),
        }
    }

    pub(super) fn reply_dns(&mut self, to: IpEndpoint, query: &[u8], answer: &Answer) {
        let reply = match dns::build_reply(query, answer) {
            Ok(reply) => reply,
            Err(e) => {
                debug!("dns reply to {to}: {e}");
                return;
            }
        };
        let socket = self.sockets.get_mut::<udp::Socket>(self.dns);
        if let Err(e) = socket.send_slice(&reply, to) {
            debug!("dns reply to {to}: {e}");
        }
    }
}
