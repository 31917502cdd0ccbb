//! The gateway's decisions as records: one `tracing` event per decision (target `egress`),
//! with its facts as fields, so a log can be text (the message) or one JSON object per
//! decision (the fields):
//!
//! | field | what |
//! |---|---|
//! | `sandbox` | the sandbox's name (absent for `krunbox run`) |
//! | `proto` | `tcp`, `udp`, `icmp`, `dns` |
//! | `source` | the guest's address and port (`-` for DNS) |
//! | `destination` | the address and port asked for; for DNS the name |
//! | `name` | the names the destination was resolved from, comma-separated (may be empty) |
//! | `decision` | `allow`, `deny`, `reset` (over a cap) or `answer` (a DNS answer given) |
//! | `rule` | the rule, or the reason, that decided; for an answer, the addresses |
//!
//! plus the `timestamp`, `level`, `target` and `message` tracing adds.

use std::fmt::Display;
use std::sync::OnceLock;

use tracing::info;

use crate::policy::Decision;

static SANDBOX: OnceLock<String> = OnceLock::new();

/// Names the sandbox every later record is of (once, at the gateway's start).
pub fn set_sandbox(name: &str) {
    let _ = SANDBOX.set(name.to_owned());
}

/// What a record says the gateway did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let through.
    Allow,
    /// Refused.
    Deny,
    /// Refused because a cap was reached.
    Reset,
    /// A DNS answer was given.
    Answer,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Reset => "reset",
            Self::Answer => "answer",
        }
    }
}

/// The verdict and reason of a policy decision.
pub fn of(decision: &Decision) -> (Verdict, &str) {
    match decision {
        Decision::Allow(why) => (Verdict::Allow, why),
        Decision::Deny(why) => (Verdict::Deny, why),
    }
}

/// Records one decision about a connection (or a packet).
pub fn record(
    proto: &str,
    source: impl Display,
    destination: impl Display,
    names: &[&str],
    verdict: Verdict,
    rule: &str,
) {
    let shown = if names.is_empty() {
        String::new()
    } else {
        format!(" [{}]", names.join(", "))
    };
    let message = format!(
        "{proto} {source} -> {destination}{shown}: {} ({rule})",
        verdict.as_str()
    );
    emit(
        proto,
        &source.to_string(),
        &destination.to_string(),
        &names.join(","),
        verdict,
        rule,
        &message,
    );
}

/// Records one decision about the guest's DNS query for `name`.
pub fn record_dns(name: &str, verdict: Verdict, rule: &str) {
    let message = format!("dns {name}: {} ({rule})", verdict.as_str());
    emit("dns", "-", name, "", verdict, rule, &message);
}

fn emit(
    proto: &str,
    source: &str,
    destination: &str,
    name: &str,
    verdict: Verdict,
    rule: &str,
    message: &str,
) {
    info!(
        target: "egress",
        sandbox = SANDBOX.get().map(String::as_str),
        proto,
        source,
        destination,
        name,
        decision = verdict.as_str(),
        rule,
        "{message}"
    );
}
