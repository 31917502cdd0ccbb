//! Image platforms (`os/arch[/variant]`) and the choice of one manifest from an index.
//!
//! The default is `linux/<host arch>`: krunbox guests are always Linux, also on a macOS host,
//! so a Mac pulls `linux/arm64`.

use std::fmt;

/// An OCI platform.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, `v7`, ... when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Why a string is not a platform.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8")]
pub struct PlatformError(pub String);

impl Platform {
    /// `linux/<arch of this host>` in GOARCH spelling.
    pub fn host_default() -> Self {
        Self {
            os: "linux".to_owned(),
            architecture: goarch(std::env::consts::ARCH).to_owned(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`; architecture aliases (`x86_64`, `aarch64`) are normalised.
    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid =
            |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid(p)) {
            return Err(PlatformError(s.to_owned()));
        }
        Ok(Self {
            os: parts[0].to_ascii_lowercase(),
            architecture: goarch(&parts[1].to_ascii_lowercase()).to_owned(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }

    /// Whether an index entry's platform satisfies this request. A request without variant
    /// takes any variant; `arm64` treats a missing variant as `v8` (as containerd does).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        if self.os != os || self.architecture != goarch(architecture) {
            return false;
        }
        match (&self.variant, variant) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Rust/uname architecture names to the GOARCH names images use.
fn goarch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" | "i386" | "i686" => "386",
        "powerpc64" => "ppc64le",
        "riscv64gc" => "riscv64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let p = Platform::parse("linux/x86_64").unwrap();
        assert_eq!(p.to_string(), "linux/amd64");
        assert!(p.matches("linux", "amd64", None));
        assert!(!p.matches("linux", "arm64", None));
        let arm = Platform::parse("linux/arm64/v8").unwrap();
        assert!(arm.matches("linux", "arm64", None));
        assert!(arm.matches("linux", "arm64", Some("v8")));
        assert!(!Platform::parse("linux/arm/v7")
            .unwrap()
            .matches("linux", "arm", Some("v6")));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//").is_err());
        assert_eq!(Platform::host_default().os, "linux");
    }
}
