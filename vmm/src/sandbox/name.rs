//! Sandbox names: what users type, and what names a directory under `$DATA/sandboxes`.

/// The longest name accepted.
pub const MAX_LEN: usize = 64;

/// Why a name is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sandbox name {0:?}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")]
pub struct InvalidName(pub String);

/// Checks a name the way Docker does (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most [`MAX_LEN`].
pub fn validate(name: &str) -> Result<(), InvalidName> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && name.len() <= MAX_LEN {
        Ok(())
    } else {
        Err(InvalidName(name.to_owned()))
    }
}

/// A fresh name for a sandbox created without `--name`: `box-` and 8 hex digits from the clock
/// and the pid (a clash is reported by `create` like any duplicate).
pub fn generate() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or_default();
    format!("box-{:08x}", nanos ^ std::process::id().rotate_left(16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_like_names_only() {
        for good in ["a", "agent-1", "My_Box.2", &"x".repeat(64)] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            ".hidden",
            "a/b",
            "..",
            "a b",
            "ä",
            &"x".repeat(65),
            "a:b",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        assert!(validate(&generate()).is_ok());
    }
}
