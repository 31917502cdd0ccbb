//! The egress policy: which host-side destinations a guest connection may reach.
//!
//! Two modes:
//! - **open** (the default): the public internet is allowed; the host's loopback, private
//!   networks (RFC 1918, CGNAT), link-local addresses (which include cloud metadata endpoints
//!   such as 169.254.169.254), multicast and reserved addresses are denied;
//! - **allowlist** (any `--allow-host` or `--allow-net` given): only what a rule names is
//!   allowed, internal addresses included when a rule names them explicitly.
//!
//! Host rules are DNS-aware: a name the guest resolved through the gateway's DNS server (and
//! that a host rule allows) makes the addresses of that answer reachable, on the rule's port.
//! Names no rule allows are not resolved at all in allowlist mode, so DNS queries cannot leak
//! data to the host's resolver either. An answer lasts its TTL (clamped to
//! [`MIN_ANSWER_LIFETIME`]..=[`MAX_ANSWER_LIFETIME`]), so an old answer stops authorizing.
//!
//! DNS rebinding: a resolver's answer that is internal (the host's loopback, private,
//! link-local and metadata addresses, the host's own addresses) is never handed to the guest
//! unless an `--allow-net` rule contains that address, and then only that rule makes it
//! reachable ([`EgressPolicy::screen_answer`]). `--add-host NAME:IP` is the CLI user's own
//! word and is trusted: its address is answered as given and a host rule for NAME reaches it.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A rule that allows a name (`example.com`, or `*.example.com` for every name below it),
/// optionally on one port only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRule {
    /// Lower-case name without a trailing dot; may start with `*.`.
    pub name: String,
    /// The only port allowed, or all.
    pub port: Option<u16>,
}

/// A rule that allows a network (`CIDR` or a plain address), optionally on one port only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRule {
    /// The network.
    pub net: Ipv4Net,
    /// The only port allowed, or all.
    pub port: Option<u16>,
}

/// A rule that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// The host part is not a DNS name.
    #[error("{0:?} is not a host name (letters, digits, '-', '.', optionally starting with '*.')")]
    BadName(String),
    /// The network part is not an IPv4 CIDR or address.
    #[error("{0:?} is not an IPv4 network (CIDR like 10.1.0.0/16, or an address)")]
    BadNet(String),
    /// The port is not 1-65535.
    #[error("{0:?} is not a port (1-65535)")]
    BadPort(String),
}

fn parse_port(text: &str) -> Result<u16, RuleError> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(RuleError::BadPort(text.to_owned())),
    }
}

impl FromStr for HostRule {
    type Err = RuleError;

    /// `NAME[:PORT]`.
    fn from_str(text: &str) -> Result<Self, RuleError> {
        let (name, port) = match text.rsplit_once(':') {
            Some((name, port)) => (name, Some(parse_port(port)?)),
            None => (text, None),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let labels = name.strip_prefix("*.").unwrap_or(&name);
        let valid = !labels.is_empty()
            && labels.len() <= 253
            && labels.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            return Err(RuleError::BadName(text.to_owned()));
        }
        Ok(Self { name, port })
    }
}

impl HostRule {
    /// Whether the rule covers `name` (lower case, no trailing dot).
    pub fn matches_name(&self, name: &str) -> bool {
        match self.name.strip_prefix("*.") {
            Some(suffix) => name
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => name == self.name,
        }
    }

    fn matches_port(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl FromStr for NetRule {
    type Err = RuleError;

    /// `CIDR[:PORT]` or `ADDRESS[:PORT]`.
    fn from_str(text: &str) -> Result<Self, RuleError> {
        let (net, port) = match text.rsplit_once(':') {
            Some((net, port)) => (net, Some(parse_port(port)?)),
            None => (text, None),
        };
        let net = match net.parse::<Ipv4Net>() {
            Ok(net) => net.trunc(),
            Err(_) => net
                .parse::<Ipv4Addr>()
                .map(Ipv4Net::from)
                .map_err(|_| RuleError::BadNet(text.to_owned()))?,
        };
        Ok(Self { net, port })
    }
}

impl fmt::Display for NetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.net),
            None => write!(f, "{}", self.net),
        }
    }
}

/// What the guest may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressPolicy {
    /// Allowed names; with `nets`, switches to allowlist mode when not empty.
    pub allow_hosts: Vec<HostRule>,
    /// Allowed networks.
    pub allow_nets: Vec<NetRule>,
}

/// The verdict on one connection or DNS query, with the reason that is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, because…
    Allow(String),
    /// Denied, because…
    Deny(String),
}

impl Decision {
    /// Whether it is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allow(why) => write!(f, "allow ({why})"),
            Self::Deny(why) => write!(f, "deny ({why})"),
        }
    }
}

/// Why an address is internal (denied in open mode), or `None` for a public address.
pub fn internal_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("the host's loopback")
    } else if ip.is_private() {
        Some("a private network")
    } else if ip.is_link_local() {
        Some("a link-local address (cloud metadata lives there)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a carrier-grade NAT network")
    } else if ip.is_unspecified() || a == 0 {
        Some("the unspecified network")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else {
        None
    }
}

impl EgressPolicy {
    /// Whether only what the rules name is allowed.
    pub fn is_allowlist(&self) -> bool {
        !self.allow_hosts.is_empty() || !self.allow_nets.is_empty()
    }

    /// Whether a DNS name may be resolved for the guest.
    pub fn decide_name(&self, name: &str) -> Decision {
        if !self.is_allowlist() {
            return Decision::Allow("open policy".into());
        }
        match self.allow_hosts.iter().find(|r| r.matches_name(name)) {
            Some(rule) => Decision::Allow(format!("--allow-host {rule}")),
            None => Decision::Deny("no --allow-host names it".into()),
        }
    }

    /// Whether the guest may connect to `dest` (the host-side address), given the names the
    /// guest resolved to it and whether `dest` is one of the host's own addresses (which the
    /// open policy denies whatever network it is on: the host's services listen there).
    pub fn decide(
        &self,
        dest: SocketAddrV4,
        names: &ResolvedNames,
        host_own: bool,
        now: Instant,
    ) -> Decision {
        let (ip, port) = (*dest.ip(), dest.port());
        if !self.is_allowlist() {
            return match (internal_reason(ip), host_own) {
                (Some(what), _) => Decision::Deny(format!(
                    "{what}; the open policy allows only public addresses (use --allow-net)"
                )),
                (None, true) => Decision::Deny(
                    "one of the host's own addresses; the open policy denies them (use \
                     --allow-net)"
                        .into(),
                ),
                (None, false) => Decision::Allow("open policy, public address".into()),
            };
        }
        if let Some(rule) = self
            .allow_nets
            .iter()
            .find(|r| r.net.contains(&ip) && r.port.is_none_or(|p| p == port))
        {
            return Decision::Allow(format!("--allow-net {rule}"));
        }
        for name in names.names_of(ip, now) {
            if let Some(rule) = self
                .allow_hosts
                .iter()
                .find(|r| r.matches_name(name) && r.matches_port(port))
            {
                return Decision::Allow(format!("--allow-host {rule} (resolved {name})"));
            }
        }
        Decision::Deny("not in the allowlist".into())
    }
}

/// Whether `ip` is an address of this host (binding to it succeeds only then).
pub fn is_host_address(ip: Ipv4Addr) -> bool {
    !ip.is_unspecified() && std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// How long a name's answer makes its addresses reachable, at least and at most (the
/// upstream TTL is clamped to this; a TTL of 0 would make the answer useless for the
/// connection that follows it, a day-long one would keep an old answer authorizing).
pub const MIN_ANSWER_LIFETIME: Duration = Duration::from_secs(10);
/// See [`MIN_ANSWER_LIFETIME`].
pub const MAX_ANSWER_LIFETIME: Duration = Duration::from_secs(300);
/// Name-address mappings kept at once; past it new answers authorize nothing (the guest only
/// starves itself) until old ones expire.
pub const MAX_RESOLVED: usize = 16 * 1024;

/// A DNS answer's lifetime clamped to [`MIN_ANSWER_LIFETIME`]..=[`MAX_ANSWER_LIFETIME`].
pub fn answer_lifetime(ttl: Duration) -> Duration {
    ttl.clamp(MIN_ANSWER_LIFETIME, MAX_ANSWER_LIFETIME)
}

/// How the gateway may pass on an address the host's resolver gave for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerUse {
    /// A public address: given to the guest, and the name's host rules apply to it.
    Public,
    /// An internal address that an `--allow-net` rule names: given to the guest, but only
    /// that rule (with its port) makes it reachable, never the name.
    AllowedInternal,
}

impl EgressPolicy {
    /// Whether `ip`, which the host's resolver answered for `name`, may be handed to the
    /// guest. Internal addresses (loopback, private, link-local and metadata, the host's own
    /// addresses) are refused unless an `--allow-net` rule contains the address: otherwise
    /// any allowed name whose DNS the guest's side controls would lead onto the host or its
    /// networks (DNS rebinding). The open policy has no such rule, so it never hands out
    /// internal answers. `Err` is the line to log, with the flag that allows it.
    pub fn screen_answer(
        &self,
        name: &str,
        ip: Ipv4Addr,
        host_own: bool,
    ) -> Result<AnswerUse, String> {
        let what = match (internal_reason(ip), host_own) {
            (Some(what), _) => what,
            (None, true) => "one of the host's own addresses",
            (None, false) => return Ok(AnswerUse::Public),
        };
        if self.allow_nets.iter().any(|rule| rule.net.contains(&ip)) {
            return Ok(AnswerUse::AllowedInternal);
        }
        Err(format!(
            "dns answer {ip} for {name} is internal ({what}); refused; allow it with \
             --allow-net {ip}/32"
        ))
    }
}

/// The names the gateway's DNS server answered with each address (host side), so host
/// rules can be applied to connections, which carry only addresses. A resolver's answer
/// lasts its (clamped) TTL; the CLI user's own names (`--add-host`, the gateway's alias)
/// last for the VM's life.
#[derive(Debug, Default)]
pub struct ResolvedNames {
    /// Address → name → until when (`None`: for the VM's life).
    by_address: HashMap<Ipv4Addr, HashMap<String, Option<Instant>>>,
    count: usize,
}

impl ResolvedNames {
    /// Records that the CLI user's configuration maps `name` to `ip` (trusted, permanent).
    pub fn record_fixed(&mut self, name: &str, ip: Ipv4Addr) {
        self.insert(name, ip, None, Instant::now());
    }

    /// Records that the host's resolver answered `ip` for `name`, valid until `expires`.
    /// Returns false (nothing recorded) when [`MAX_RESOLVED`] live mappings exist.
    pub fn record(&mut self, name: &str, ip: Ipv4Addr, expires: Instant, now: Instant) -> bool {
        self.insert(name, ip, Some(expires), now)
    }

    fn insert(&mut self, name: &str, ip: Ipv4Addr, expires: Option<Instant>, now: Instant) -> bool {
        if let Some(existing) = self.by_address.get_mut(&ip).and_then(|n| n.get_mut(name)) {
            // A fixed mapping stays fixed; a fresh answer extends an old one.
            *existing = match (*existing, expires) {
                (None, _) | (_, None) => None,
                (Some(a), Some(b)) => Some(a.max(b)),
            };
            return true;
        }
        if self.count >= MAX_RESOLVED {
            self.prune(now);
            if self.count >= MAX_RESOLVED {
                return false;
            }
        }
        self.by_address
            .entry(ip)
            .or_default()
            .insert(name.to_owned(), expires);
        self.count += 1;
        true
    }

    /// Forgets every expired mapping.
    pub fn prune(&mut self, now: Instant) {
        let mut removed = 0;
        self.by_address.retain(|_, names| {
            let before = names.len();
            names.retain(|_, expires| expires.is_none_or(|e| e > now));
            removed += before - names.len();
            !names.is_empty()
        });
        self.count -= removed;
    }

    /// The names whose answer gave `ip` and is still valid at `now`.
    pub fn names_of(&self, ip: Ipv4Addr, now: Instant) -> impl Iterator<Item = &str> {
        self.by_address
            .get(&ip)
            .into_iter()
            .flat_map(|names| names.iter())
            .filter(move |(_, expires)| expires.is_none_or(|e| e > now))
            .map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(text: &str) -> SocketAddrV4 {
        text.parse().expect("address")
    }

    #[test]
    fn parses_rules_and_rejects_bad_ones() {
        assert_eq!(
            "Example.COM.:443".parse::<HostRule>(),
            Ok(HostRule {
                name: "example.com".into(),
                port: Some(443)
            })
        );
        assert!("*.example.com".parse::<HostRule>().is_ok());
        assert!("exa mple.com".parse::<HostRule>().is_err());
        assert!("example.com:0".parse::<HostRule>().is_err());
        assert!("example.com:http".parse::<HostRule>().is_err());
        assert!("*.".parse::<HostRule>().is_err());
        let rule: NetRule = "10.1.2.3/16:8080".parse().expect("rule");
        assert_eq!(rule.to_string(), "10.1.0.0/16:8080");
        assert_eq!(
            "127.0.0.1".parse::<NetRule>().map(|r| r.to_string()),
            Ok("127.0.0.1/32".into())
        );
        assert!("10.0.0.0/33".parse::<NetRule>().is_err());
        assert!("::1".parse::<NetRule>().is_err());
        assert!("example.com".parse::<NetRule>().is_err());
    }

    #[test]
    fn host_addresses_are_recognised() {
        assert!(is_host_address(Ipv4Addr::LOCALHOST));
        assert!(!is_host_address(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(!is_host_address(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn wildcards_match_names_below_only() {
        let rule: HostRule = "*.example.com".parse().expect("rule");
        assert!(rule.matches_name("api.example.com"));
        assert!(rule.matches_name("a.b.example.com"));
        assert!(!rule.matches_name("example.com"));
        assert!(!rule.matches_name("badexample.com"));
    }

    #[test]
    fn open_policy_denies_internal_addresses() {
        let policy = EgressPolicy::default();
        let names = ResolvedNames::default();
        let now = Instant::now();
        for denied in [
            "127.0.0.1:22",
            "10.0.0.5:80",
            "172.16.1.1:80",
            "192.168.1.1:80",
            "169.254.169.254:80",
            "100.64.0.1:80",
            "0.0.0.0:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
        ] {
            assert!(
                !policy.decide(dest(denied), &names, false, now).is_allowed(),
                "{denied} must be denied"
            );
        }
        assert!(policy
            .decide(dest("93.184.216.34:443"), &names, false, now)
            .is_allowed());
        assert!(policy.decide_name("anything.example").is_allowed());
    }

    #[test]
    fn allowlist_allows_named_networks_and_resolved_names_on_their_ports() {
        let policy = EgressPolicy {
            allow_hosts: vec!["api.example.com:443".parse().expect("rule")],
            allow_nets: vec!["127.0.0.1/32:8080".parse().expect("rule")],
        };
        let mut names = ResolvedNames::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        assert!(policy
            .decide(dest("127.0.0.1:8080"), &names, false, now)
            .is_allowed());
        assert!(!policy
            .decide(dest("127.0.0.1:8081"), &names, false, now)
            .is_allowed());
        assert!(!policy
            .decide(dest("93.184.216.34:443"), &names, false, now)
            .is_allowed());
        names.record(
            "api.example.com",
            "93.184.216.34".parse().expect("ip"),
            later,
            now,
        );
        assert!(policy
            .decide(dest("93.184.216.34:443"), &names, false, now)
            .is_allowed());
        assert!(!policy
            .decide(dest("93.184.216.34:80"), &names, false, now)
            .is_allowed());
        names.record(
            "other.example.com",
            "93.184.216.35".parse().expect("ip"),
            later,
            now,
        );
        assert!(!policy
            .decide(dest("93.184.216.35:443"), &names, false, now)
            .is_allowed());
        assert!(policy.decide_name("api.example.com").is_allowed());
        assert!(!policy.decide_name("evil.example.com").is_allowed());
    }

    #[test]
    fn internal_answers_are_refused_unless_a_net_rule_names_them() {
        let loopback = Ipv4Addr::LOCALHOST;
        let metadata = Ipv4Addr::new(169, 254, 169, 254);
        let private = Ipv4Addr::new(192, 168, 1, 1);
        let public = Ipv4Addr::new(93, 184, 216, 34);
        let allowlist = EgressPolicy {
            allow_hosts: vec!["evil.test".parse().expect("rule")],
            allow_nets: Vec::new(),
        };
        for policy in [EgressPolicy::default(), allowlist.clone()] {
            for ip in [loopback, metadata, private] {
                let why = policy
                    .screen_answer("evil.test", ip, false)
                    .expect_err("an internal answer is refused");
                assert!(
                    why.contains(&format!("dns answer {ip} for evil.test is internal"))
                        && why.contains(&format!("--allow-net {ip}/32")),
                    "{why}"
                );
            }
            assert_eq!(
                policy.screen_answer("evil.test", public, false),
                Ok(AnswerUse::Public)
            );
            // A public address that is the host's own is internal too.
            assert!(policy.screen_answer("evil.test", public, true).is_err());
        }
        let mut with_net = allowlist;
        with_net
            .allow_nets
            .push("127.0.0.1/32:8080".parse().expect("rule"));
        assert_eq!(
            with_net.screen_answer("evil.test", loopback, false),
            Ok(AnswerUse::AllowedInternal)
        );
        assert!(with_net
            .screen_answer("evil.test", metadata, false)
            .is_err());
    }

    #[test]
    fn answers_expire_and_fixed_names_do_not() {
        let policy = EgressPolicy {
            allow_hosts: vec![
                "api.example.com".parse().expect("rule"),
                "db.test".parse().expect("rule"),
            ],
            allow_nets: Vec::new(),
        };
        let public: Ipv4Addr = "93.184.216.34".parse().expect("ip");
        let mut names = ResolvedNames::default();
        let now = Instant::now();
        let lifetime = answer_lifetime(Duration::from_secs(30));
        assert!(names.record("api.example.com", public, now + lifetime, now));
        names.record_fixed("db.test", Ipv4Addr::LOCALHOST);
        let to = |ip: Ipv4Addr| SocketAddrV4::new(ip, 443);
        assert!(policy.decide(to(public), &names, false, now).is_allowed());
        let after = now + lifetime + Duration::from_secs(1);
        assert!(!policy.decide(to(public), &names, false, after).is_allowed());
        // The CLI user's --add-host is trusted, whatever its address, for the VM's life.
        let much_later = now + Duration::from_secs(86_400);
        assert!(policy
            .decide(to(Ipv4Addr::LOCALHOST), &names, false, much_later)
            .is_allowed());
        names.prune(after);
        assert_eq!(names.count, 1);
        assert_eq!(answer_lifetime(Duration::ZERO), MIN_ANSWER_LIFETIME);
        assert_eq!(
            answer_lifetime(Duration::from_secs(86_400)),
            MAX_ANSWER_LIFETIME
        );
    }

    #[test]
    fn the_mapping_table_is_bounded() {
        let mut names = ResolvedNames::default();
        let now = Instant::now();
        let soon = now + Duration::from_secs(10);
        for i in 0..MAX_RESOLVED as u32 {
            assert!(names.record(&format!("n{i}.test"), Ipv4Addr::from(i), soon, now));
        }
        let extra = Ipv4Addr::new(93, 184, 216, 34);
        assert!(!names.record("extra.test", extra, soon, now));
        assert_eq!(names.names_of(extra, now).count(), 0);
        // Once the old answers expired there is room again.
        let after = soon + Duration::from_secs(1);
        assert!(names.record("extra.test", extra, after + Duration::from_secs(10), after));
        assert_eq!(names.count, 1);
    }
}
