//! Resource limits by name: `NAME=SOFT[:HARD]` as `docker run --ulimit` takes them, and the
//! OCI config's `RLIMIT_*` types, in Linux's numbering (the guest is Linux whatever the host
//! is, so the host's `libc` constants are not used: macOS numbers them differently).
//!
//! ```
//! use krunbox_protocol::rlimit::parse_ulimit;
//! let nofile = parse_ulimit("nofile=1024:4096").unwrap();
//! assert_eq!((nofile.resource, nofile.soft, nofile.hard), (7, 1024, 4096));
//! assert_eq!(parse_ulimit("core=unlimited").unwrap().hard, u64::MAX);
//! assert!(parse_ulimit("nofile=10:5").is_err());
//! ```

use crate::messages::Rlimit;

/// The handshake feature of an agent that applies [`ExecRequest::rlimits`](crate::messages::ExecRequest::rlimits).
pub const AGENT_FEATURE: &str = "rlimits";

/// No limit (`RLIM_INFINITY` on Linux).
pub const UNLIMITED: u64 = u64::MAX;

/// Every resource Linux limits, by the name `ulimit`/Docker use, in Linux's numbering.
pub const RESOURCES: [(&str, u32); 16] = [
    ("cpu", 0),
    ("fsize", 1),
    ("data", 2),
    ("stack", 3),
    ("core", 4),
    ("rss", 5),
    ("nproc", 6),
    ("nofile", 7),
    ("memlock", 8),
    ("as", 9),
    ("locks", 10),
    ("sigpending", 11),
    ("msgqueue", 12),
    ("nice", 13),
    ("rtprio", 14),
    ("rttime", 15),
];

/// Why a limit is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UlimitError {
    /// Not `NAME=SOFT[:HARD]`.
    #[error("`{0}` is not NAME=SOFT[:HARD] (for example nofile=1024:4096)")]
    Syntax(String),
    /// A name Linux does not limit.
    #[error("`{0}` is not a resource limit; one of: {names}", names = names())]
    UnknownResource(String),
    /// A value that is not a number, `unlimited` or -1.
    #[error("`{0}` is not a limit (a number, `unlimited` or -1)")]
    BadValue(String),
    /// The soft limit is above the hard one.
    #[error("{name}: the soft limit {soft} is above the hard limit {hard}")]
    SoftAboveHard {
        /// The resource.
        name: String,
        /// Soft.
        soft: u64,
        /// Hard.
        hard: u64,
    },
}

fn names() -> String {
    RESOURCES.map(|(name, _)| name).join(", ")
}

/// The number of a resource named `nofile`, `NOFILE` or `RLIMIT_NOFILE`.
pub fn resource_number(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("rlimit_").unwrap_or(&lower);
    RESOURCES
        .iter()
        .find(|(known, _)| *known == bare)
        .map(|&(_, number)| number)
}

/// The name of resource `number` (`nofile` for 7).
pub fn resource_name(number: u32) -> Option<&'static str> {
    RESOURCES
        .iter()
        .find(|(_, known)| *known == number)
        .map(|&(name, _)| name)
}

fn value(text: &str) -> Result<u64, UlimitError> {
    match text {
        "unlimited" | "-1" => Ok(UNLIMITED),
        _ => text
            .parse()
            .map_err(|_| UlimitError::BadValue(text.to_owned())),
    }
}

/// A limit of resource `name` (any spelling [`resource_number`] takes), checked.
pub fn named_limit(name: &str, soft: u64, hard: u64) -> Result<Rlimit, UlimitError> {
    let resource =
        resource_number(name).ok_or_else(|| UlimitError::UnknownResource(name.to_owned()))?;
    if soft > hard {
        return Err(UlimitError::SoftAboveHard {
            name: name.to_owned(),
            soft,
            hard,
        });
    }
    Ok(Rlimit {
        resource,
        soft,
        hard,
    })
}

/// `NAME=SOFT[:HARD]` (a single value is both limits, as with Docker).
pub fn parse_ulimit(text: &str) -> Result<Rlimit, UlimitError> {
    let (name, values) = text
        .split_once('=')
        .ok_or_else(|| UlimitError::Syntax(text.to_owned()))?;
    let (soft, hard) = match values.split_once(':') {
        Some((soft, hard)) => (value(soft)?, value(hard)?),
        None => {
            let both = value(values)?;
            (both, both)
        }
    };
    named_limit(name, soft, hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_values() {
        assert_eq!(resource_number("RLIMIT_NPROC"), Some(6));
        assert_eq!(resource_number("Stack"), Some(3));
        assert_eq!(resource_name(15), Some("rttime"));
        assert_eq!(resource_name(16), None);
        let both = parse_ulimit("nproc=64").unwrap();
        assert_eq!((both.soft, both.hard), (64, 64));
        let open = parse_ulimit("stack=8388608:-1").unwrap();
        assert_eq!((open.soft, open.hard), (8_388_608, UNLIMITED));
        for bad in [
            "nofile",
            "files=1",
            "nofile=x",
            "nofile=1:y",
            "nofile=-2",
            "=1",
        ] {
            assert!(parse_ulimit(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_ulimit("nofile=unlimited:10"),
            Err(UlimitError::SoftAboveHard { .. })
        ));
    }
}
