//! The names users give krunbox's things (sandboxes, volumes): what they type, and what names
//! a directory under `$DATA`.

/// The longest name accepted.
pub const MAX_LEN: usize = 64;

/// Why a name is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")]
pub struct InvalidName {
    /// What was named ("sandbox", "volume").
    pub kind: &'static str,
    /// The name.
    pub name: String,
}

/// Whether `name` is one the way Docker's are (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most
/// [`MAX_LEN`] long: never a path, never hidden, never `..`.
pub fn is_valid(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    first_ok && rest_ok && name.len() <= MAX_LEN
}

/// Checks the name of a `kind`.
pub fn validate(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    if is_valid(name) {
        Ok(())
    } else {
        Err(InvalidName {
            kind,
            name: name.to_owned(),
        })
    }
}

/// The valid names among the entries of `dir`, sorted (a missing `dir` has none): what a
/// store of named directories lists, leaving out hidden staging and removal directories.
pub fn entries(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = listing
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| is_valid(n))
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_like_names_only() {
        for good in ["a", "agent-1", "My_Box.2", &"x".repeat(64)] {
            assert!(is_valid(good), "{good}");
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
            assert!(!is_valid(bad), "{bad}");
        }
        assert_eq!(
            validate("volume", "a/b").unwrap_err().to_string(),
            "invalid volume name \"a/b\": use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        );
    }
}
