//! `--secret NAME@HOST[,HOST…]`: a credential that never enters the VM.
//!
//! The guest sees `NAME` set to a placeholder
//! ([`secret_placeholder`](krunbox_protocol::boot::secret_placeholder)). The gateway holds the
//! value (read from its own environment, which it inherits from the krunbox command that
//! booted the VM; never argv or a file). For a guest TLS connection to one of the secret's
//! hosts (by its SNI, on the host's port), the gateway terminates TLS with a certificate of
//! the sandbox's own CA ([`ca`]), which the guest trusts, opens TLS to the real server
//! verifying it against the host's trust store, and forwards HTTP/1.1 requests with the
//! placeholder replaced by the value in their header values ([`intercept`]). To any other
//! host the placeholder goes out as it is.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[cfg(feature = "secrets")]
pub mod ca;
#[cfg(feature = "secrets")]
pub mod http;
#[cfg(feature = "secrets")]
pub mod intercept;

#[cfg(feature = "secrets")]
pub use intercept::Interceptor;

/// A build without TLS interception (the `secrets` feature off, as in the macOS check on
/// Linux CI, which cannot compile aws-lc's C for Apple): no interceptor can exist.
#[cfg(not(feature = "secrets"))]
pub enum Interceptor {}

#[cfg(not(feature = "secrets"))]
impl Interceptor {
    /// Never called: there is no interceptor.
    pub fn ca_pem(&self) -> String {
        match *self {}
    }

    /// Never called: there is no interceptor.
    pub fn watches(&self, _port: u16) -> bool {
        match *self {}
    }

    /// Never called: there is no interceptor.
    pub async fn serve(
        self: std::sync::Arc<Self>,
        _guest: tokio::io::DuplexStream,
        _server: tokio::net::TcpStream,
        _flow: crate::inspect::Flow,
    ) {
        match *self {}
    }
}

/// The gateway's port (on its own address, [`GATEWAY_IP`](crate::config::GATEWAY_IP)) that
/// serves the sandbox's CA certificate to guest-init at boot (`krunbox.trust`). Served only
/// when the network has secrets; the host's loopback port of the same number is then not
/// reachable from the guest.
pub const TRUST_PORT: u16 = 1;

/// The shortest value taken: a shorter one could match unrelated header text (put back as a
/// placeholder, it would corrupt it and tell the guest where it occurs).
pub const MIN_VALUE_LEN: usize = 8;

/// The port a secret's host is reached on unless it names one.
pub const HTTPS_PORT: u16 = 443;

/// One `--secret`: the variable and the hosts its value may be sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    /// The variable: the guest sees it set to the placeholder; the gateway reads the value
    /// from its own environment.
    pub name: String,
    /// Where the value goes.
    pub hosts: Vec<SecretHost>,
}

/// A host a secret's value may be sent to: a DNS name, matched (case aside, and a trailing
/// dot) against the TLS server name the guest asks for, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHost {
    /// The name, lowercase, without a trailing dot.
    pub name: String,
    /// The port.
    pub port: u16,
}

/// A `--secret` that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// Not `NAME@HOST[,HOST…]`.
    #[error("--secret {0:?}: expected NAME@HOST[:PORT][,HOST…], e.g. API_KEY@api.example.com")]
    Syntax(String),
    /// The variable's name is not a shell variable's.
    #[error("--secret {0:?}: NAME must be a variable name (letters, digits, _)")]
    BadName(String),
    /// A host is not a DNS name.
    #[error("--secret {secret}: {host:?} is not a host name (a DNS name, optionally :PORT)")]
    BadHost {
        /// The secret.
        secret: String,
        /// The host.
        host: String,
    },
    /// The same variable twice.
    #[error("--secret {0} is given twice")]
    Twice(String),
    /// The variable is not set where krunbox runs.
    #[error("--secret {0}: the environment variable {0} is not set (krunbox takes the value from it, never from the command line)")]
    Unset(String),
    /// A value that cannot go in an HTTP header.
    #[error("--secret {0}: the value has a line break or a control character, which cannot go in an HTTP header")]
    BadValue(String),
    /// A value so short it could match other text (and be guessed from what changes).
    #[error("--secret {0}: the value is shorter than {MIN_VALUE_LEN} characters; that is not a credential")]
    TooShort(String),
}

impl Secret {
    /// What the guest sees instead of the value.
    pub fn placeholder(&self) -> String {
        krunbox_protocol::boot::secret_placeholder(&self.name)
    }

    /// Whether TLS to `server_name` on `port` carries this secret.
    pub fn is_for(&self, server_name: &str, port: u16) -> bool {
        let server_name = server_name.trim_end_matches('.');
        self.hosts
            .iter()
            .any(|h| h.port == port && h.name.eq_ignore_ascii_case(server_name))
    }
}

impl FromStr for Secret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Self, SecretError> {
        let (name, hosts) = text
            .split_once('@')
            .ok_or_else(|| SecretError::Syntax(text.to_owned()))?;
        if !krunbox_protocol::boot::is_secret_name(name) {
            return Err(SecretError::BadName(text.to_owned()));
        }
        let bad_host = |host: &str| SecretError::BadHost {
            secret: name.to_owned(),
            host: host.to_owned(),
        };
        let hosts = hosts
            .split(',')
            .map(|host| {
                let (host_name, port) = match host.rsplit_once(':') {
                    Some((host_name, port)) => {
                        let port = port.parse::<u16>().ok().filter(|p| *p > 0);
                        (host_name, port.ok_or_else(|| bad_host(host))?)
                    }
                    None => (host, HTTPS_PORT),
                };
                let host_name = host_name.trim_end_matches('.').to_ascii_lowercase();
                if !is_dns_name(&host_name) {
                    return Err(bad_host(host));
                }
                Ok(SecretHost {
                    name: host_name,
                    port,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.to_owned(),
            hosts,
        })
    }
}

/// A DNS name of letters, digits and hyphens in dot-separated labels, with a letter in its
/// last label (so not an address).
fn is_dns_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|last| last.chars().any(|c| c.is_ascii_alphabetic()))
}

/// Checks a network's secrets: each variable once, each set in `environment` (a lookup of
/// this process's, or a test's) to a value that can go in a header. Returns the values, in
/// the secrets' order.
pub fn values(
    secrets: &[Secret],
    environment: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, SecretError> {
    let mut values = Vec::with_capacity(secrets.len());
    for (i, secret) in secrets.iter().enumerate() {
        if secrets[..i].iter().any(|s| s.name == secret.name) {
            return Err(SecretError::Twice(secret.name.clone()));
        }
        let value = environment(&secret.name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SecretError::Unset(secret.name.clone()))?;
        if value.chars().any(|c| c.is_control()) {
            return Err(SecretError::BadValue(secret.name.clone()));
        }
        if value.len() < MIN_VALUE_LEN {
            return Err(SecretError::TooShort(secret.name.clone()));
        }
        values.push(value);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_with_their_hosts_and_ports() {
        let secret: Secret = "API_KEY@Api.Example.com,models.test:8443"
            .parse()
            .expect("secret");
        assert_eq!(secret.name, "API_KEY");
        assert_eq!(
            secret.hosts,
            [
                SecretHost {
                    name: "api.example.com".into(),
                    port: 443
                },
                SecretHost {
                    name: "models.test".into(),
                    port: 8443
                }
            ]
        );
        assert!(secret.is_for("API.example.com.", 443));
        assert!(!secret.is_for("api.example.com", 8443));
        assert!(!secret.is_for("evil.api.example.com", 443));
        assert!(secret.is_for("models.test", 8443));
    }

    #[test]
    fn bad_secrets_are_refused_with_their_reason() {
        for (text, expected) in [
            ("API_KEY", "expected NAME@HOST"),
            ("2KEY@a.test", "variable name"),
            ("A-B@a.test", "variable name"),
            ("K@", "not a host name"),
            ("K@10.0.0.1", "not a host name"),
            ("K@a.test:0", "not a host name"),
            ("K@a..test", "not a host name"),
            ("K@*.a.test", "not a host name"),
            ("K@a.test,", "not a host name"),
        ] {
            let err = text.parse::<Secret>().expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn values_come_from_the_environment_and_must_fit_a_header() {
        let secrets: Vec<Secret> = ["A@a.test", "B@b.test"]
            .iter()
            .map(|s| s.parse().expect("secret"))
            .collect();
        let env = |name: &str| match name {
            "A" => Some("value-one".to_owned()),
            "B" => Some("value-two".to_owned()),
            _ => None,
        };
        assert_eq!(
            values(&secrets, env).expect("values"),
            ["value-one", "value-two"]
        );
        assert_eq!(
            values(&secrets, |_| Some("short".into())),
            Err(SecretError::TooShort("A".into()))
        );
        assert_eq!(
            values(&secrets, |_| None),
            Err(SecretError::Unset("A".into()))
        );
        assert_eq!(
            values(&secrets, |_| Some("x\r\nInjected: 1".into())),
            Err(SecretError::BadValue("A".into()))
        );
        let twice = vec![secrets[0].clone(), secrets[0].clone()];
        assert_eq!(values(&twice, env), Err(SecretError::Twice("A".into())));
    }
}
