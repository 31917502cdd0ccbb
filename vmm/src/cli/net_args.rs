//! The network options, shared by `krunbox run` and `krunbox create`.

use std::net::SocketAddr;
use std::path::PathBuf;

use krunbox_net::config::{PublishedPort, SpecError, StaticHost};
use krunbox_net::policy::{HostRule, NetRule, RuleError};
use krunbox_net::secrets::{Secret, SecretError};
use krunbox_net::NetConfig;

use crate::backend::net::LogFormat;
use crate::backend::{Network, UserNetwork};

/// A test and advanced knob: the DNS server (`IP:PORT`) that resolves the guest's queries
/// instead of the host's resolver. Its answers go through the same policy (internal
/// addresses refused unless `--allow-net` names them) and their TTLs are used.
pub const DNS_SERVER_ENV: &str = "KRUNBOX_DNS_SERVER";

/// The guest's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NetworkMode {
    /// A virtio-net card behind krunbox's gateway: egress under the policy (--allow-host,
    /// --allow-net; by default the public internet but not the host's loopback, private
    /// networks, link-local or cloud metadata addresses), DNS, published ports (-p).
    #[default]
    User,
    /// No network card: the guest reaches nothing (the agent's vsock only).
    None,
    /// libkrun's TSI: the VMM process opens the guest's sockets, reaching all the host
    /// reaches, its loopback included; no policy, no -p. libkrun with libkrunfw only.
    Tsi,
}

/// Bad network options.
#[derive(Debug, thiserror::Error)]
pub enum NetArgsError {
    /// A rule did not parse.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A -p or --add-host did not parse.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A --secret did not parse or has no value.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// `-e` names a secret.
    #[error("-e {0}: {0} is a --secret; the guest gets its placeholder, never a value")]
    SecretInEnv(String),
    /// This build cannot intercept TLS.
    #[cfg(not(feature = "secrets"))]
    #[error("{}", crate::backend::net::NO_SECRETS_FEATURE)]
    NoSecretsFeature,
    /// `KRUNBOX_DNS_SERVER` is not an address.
    #[error("{DNS_SERVER_ENV}={0:?} is not an IP:PORT address, e.g. 127.0.0.1:5353")]
    DnsServer(String),
    /// Options that need the user network with another mode.
    #[error("{option} needs the default network (--network user), not --network {mode}")]
    NeedsUserNetwork {
        /// The option.
        option: &'static str,
        /// The mode given.
        mode: &'static str,
    },
}

/// Network options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NetArgs {
    /// The guest's network: `user` (default), `none` or `tsi`.
    #[arg(long, value_enum, default_value_t = NetworkMode::User)]
    pub network: NetworkMode,
    /// Publish a guest TCP port on the host: [HOSTIP:]HOSTPORT:GUESTPORT[/tcp]. HOSTIP
    /// defaults to 127.0.0.1 (give 0.0.0.0 to listen on every interface). Repeatable.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOSTIP:]HOSTPORT:GUESTPORT"
    )]
    pub publish: Vec<String>,
    /// Allow connections to this host name (and `*.NAME` for every name below it), on
    /// PORT only if given. The guest must resolve the name through krunbox's DNS server (its
    /// default): the addresses of that answer become reachable for the answer's TTL (10 s to
    /// 5 min). An internal address in the answer (the host's loopback, private, link-local or
    /// metadata addresses) is refused unless an --allow-net rule names it. Any --allow-host or
    /// --allow-net turns the default policy into an allowlist: nothing else is reachable.
    #[arg(long = "allow-host", value_name = "NAME[:PORT]")]
    pub allow_hosts: Vec<String>,
    /// Allow connections to this IPv4 network (CIDR or address), on PORT only if given.
    /// The guest reaches the host's loopback at 10.0.2.2 (host.krunbox.internal): allow it
    /// with e.g. --allow-net 127.0.0.1:8080.
    #[arg(long = "allow-net", value_name = "CIDR[:PORT]")]
    pub allow_nets: Vec<String>,
    /// Make krunbox's DNS server answer NAME with IP (a host-side address; 127.0.0.1 is the
    /// host's loopback). Connections still need the policy's consent; an --allow-host rule
    /// for NAME reaches IP even when it is internal (you wrote the mapping).
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_hosts: Vec<String>,
    /// Give the guest the environment variable NAME as a placeholder, never its value: the
    /// gateway puts the value (taken from NAME in krunbox's own environment, never from the
    /// command line) in place of the placeholder in the header values of HTTPS requests to
    /// HOST (port 443 unless :PORT), which it intercepts with a CA of this sandbox that the
    /// guest trusts, after verifying the real server against the host's trust store. To any
    /// other host the placeholder goes out as it is. HOST must also be reachable under the
    /// policy (--allow-host HOST with an allowlist). Repeatable.
    #[arg(long = "secret", value_name = "NAME@HOST[:PORT][,HOST…]")]
    pub secrets: Vec<String>,
    /// Also append every network decision (each connection allowed or denied, with the rule
    /// or reason; DNS answers; published connections) to this file.
    #[arg(long = "network-log", value_name = "FILE")]
    pub network_log: Option<PathBuf>,
    /// How --network-log is written: `text`, or `json` (one object per decision: timestamp,
    /// sandbox, proto, source, destination, name, decision, rule, message).
    #[arg(
        long = "network-log-format",
        value_enum,
        default_value_t = LogFormat::Text,
        requires = "network_log"
    )]
    pub network_log_format: LogFormat,
}

impl NetArgs {
    /// The network these options describe.
    pub fn network(&self) -> Result<Network, NetArgsError> {
        let mode = match self.network {
            NetworkMode::User => None,
            NetworkMode::None => Some((Network::Disabled, "none")),
            NetworkMode::Tsi => Some((Network::Tsi, "tsi")),
        };
        if let Some((network, mode)) = mode {
            let used = [
                ("-p", !self.publish.is_empty()),
                ("--allow-host", !self.allow_hosts.is_empty()),
                ("--allow-net", !self.allow_nets.is_empty()),
                ("--add-host", !self.add_hosts.is_empty()),
                ("--network-log", self.network_log.is_some()),
                ("--secret", !self.secrets.is_empty()),
            ];
            if let Some((option, _)) = used.iter().find(|(_, used)| *used) {
                return Err(NetArgsError::NeedsUserNetwork { option, mode });
            }
            return Ok(network);
        }
        let mut config = NetConfig::default();
        for rule in &self.allow_hosts {
            config.policy.allow_hosts.push(rule.parse::<HostRule>()?);
        }
        for rule in &self.allow_nets {
            config.policy.allow_nets.push(rule.parse::<NetRule>()?);
        }
        for port in &self.publish {
            config.publish.push(port.parse::<PublishedPort>()?);
        }
        for host in &self.add_hosts {
            config.hosts.push(host.parse::<StaticHost>()?);
        }
        for secret in &self.secrets {
            config.secrets.push(secret.parse::<Secret>()?);
        }
        check_secrets(&config.secrets)?;
        config.dns_server = dns_server(std::env::var_os(DNS_SERVER_ENV))?;
        let log = match &self.network_log {
            Some(path) if path.is_relative() => std::env::current_dir().ok().map(|d| d.join(path)),
            other => other.clone(),
        };
        Ok(Network::User(Box::new(UserNetwork {
            config,
            log,
            log_format: self.network_log_format,
            sandbox: None,
        })))
    }
}

/// Checks that every secret has a value here, where the gateway will inherit it from, and
/// that this build can intercept TLS; the values stay in the environment.
pub fn check_secrets(secrets: &[Secret]) -> Result<(), NetArgsError> {
    if secrets.is_empty() {
        return Ok(());
    }
    krunbox_net::secrets::values(secrets, |name| std::env::var(name).ok())?;
    #[cfg(not(feature = "secrets"))]
    return Err(NetArgsError::NoSecretsFeature);
    #[cfg(feature = "secrets")]
    Ok(())
}

/// Refuses `-e` entries that name a secret (a bare `-e NAME` would copy the value in).
pub fn refuse_secret_env(network: &Network, env: &[String]) -> Result<(), NetArgsError> {
    let Network::User(network) = network else {
        return Ok(());
    };
    let named = |entry: &String| {
        let key = entry.split_once('=').map_or(entry.as_str(), |(key, _)| key);
        network.config.secrets.iter().find(|s| s.name == key)
    };
    match env.iter().find_map(named) {
        Some(secret) => Err(NetArgsError::SecretInEnv(secret.name.clone())),
        None => Ok(()),
    }
}

/// The `KRUNBOX_DNS_SERVER` value, if set and not empty.
fn dns_server(value: Option<std::ffi::OsString>) -> Result<Option<SocketAddr>, NetArgsError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    text.parse()
        .map(Some)
        .map_err(|_| NetArgsError::DnsServer(text.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_a_network() {
        let args = NetArgs {
            publish: vec!["8080:80".into()],
            allow_hosts: vec!["example.com:443".into()],
            allow_nets: vec!["127.0.0.1:9000".into()],
            add_hosts: vec!["db.test:127.0.0.1".into()],
            ..NetArgs::default()
        };
        let Network::User(network) = args.network().expect("network") else {
            panic!("a user network")
        };
        assert_eq!(network.config.publish.len(), 1);
        assert!(network.config.policy.is_allowlist());
        assert_eq!(network.config.hosts[0].name, "db.test");
    }

    #[test]
    fn bad_or_contradictory_options_are_refused() {
        let bad = NetArgs {
            allow_nets: vec!["10.0.0.0/99".into()],
            ..NetArgs::default()
        };
        assert!(bad.network().is_err());
        let contradictory = NetArgs {
            network: NetworkMode::None,
            publish: vec!["8080:80".into()],
            ..NetArgs::default()
        };
        let message = contradictory.network().expect_err("refused").to_string();
        assert!(message.contains("-p"), "{message}");
        let none = NetArgs {
            network: NetworkMode::None,
            ..NetArgs::default()
        };
        assert_eq!(none.network().expect("none"), Network::Disabled);
    }

    #[test]
    fn the_dns_server_knob() {
        assert_eq!(dns_server(None).expect("unset"), None);
        assert_eq!(dns_server(Some("".into())).expect("empty"), None);
        assert_eq!(
            dns_server(Some("127.0.0.1:5353".into())).expect("address"),
            Some("127.0.0.1:5353".parse().expect("addr"))
        );
        let message = dns_server(Some("localhost".into()))
            .expect_err("not an address")
            .to_string();
        assert!(message.contains("KRUNBOX_DNS_SERVER"), "{message}");
    }
}
