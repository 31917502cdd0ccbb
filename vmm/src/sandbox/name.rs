//! Sandbox names: [`crate::names`]' rule, and the names krunbox makes up.

pub use crate::names::InvalidName;

/// Checks a sandbox name.
pub fn validate(name: &str) -> Result<(), InvalidName> {
    crate::names::validate("sandbox", name)
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
    fn generated_names_are_valid() {
        assert!(validate(&generate()).is_ok());
        assert!(validate("../x").is_err());
    }
}
