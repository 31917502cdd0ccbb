//! Kernel configuration fragments (`kernel-config/*.config`) and checking that they stuck.
//!
//! A fragment has the syntax of a `.config`: `CONFIG_X=value` lines and
//! `# CONFIG_X is not set` lines; other comments and blank lines are ignored. After the
//! fragments are merged onto tinyconfig and `make olddefconfig` resolved dependencies, every
//! option a fragment names must have exactly the fragment's value in the final `.config`:
//! Kconfig silently drops an option whose dependencies are not met.

use std::collections::BTreeMap;

/// What a fragment asks of one option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// `CONFIG_X=value` (the value as written: `y`, `"-krunbox"`, `0x10`, ...).
    Value(String),
    /// `# CONFIG_X is not set`.
    Off,
}

/// The options of one or more fragments, by name (`CONFIG_X`); a later fragment overrides an
/// earlier one, as merge_config.sh does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options(pub BTreeMap<String, Wanted>);

/// A line of a fragment that is neither an option nor a comment.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {text:?} is not `CONFIG_X=value` or `# CONFIG_X is not set`")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// The line.
    pub text: String,
}

impl Options {
    /// Adds the options of `fragment` (overriding earlier ones).
    pub fn add(&mut self, fragment: &str) -> Result<(), ParseError> {
        for (index, raw) in fragment.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(name) = off_option(line) {
                self.0.insert(name.to_owned(), Wanted::Off);
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some((name, value)) if is_option_name(name) && !value.is_empty() => {
                    self.0
                        .insert(name.to_owned(), Wanted::Value(value.to_owned()));
                }
                _ => {
                    return Err(ParseError {
                        line: index + 1,
                        text: raw.to_owned(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The options whose value in `config` (a final `.config`) differs from what was asked,
    /// each as `CONFIG_X: wanted W, got G`. Empty when everything stuck.
    pub fn mismatches(&self, config: &str) -> Vec<String> {
        let actual = values(config);
        self.0
            .iter()
            .filter_map(|(name, wanted)| {
                let got = actual.get(name.as_str()).copied();
                let ok = match wanted {
                    Wanted::Value(value) => got == Some(value.as_str()),
                    Wanted::Off => got.is_none(),
                };
                (!ok).then(|| {
                    let wanted = match wanted {
                        Wanted::Value(value) => value.as_str(),
                        Wanted::Off => "not set",
                    };
                    format!(
                        "{name}: wanted {wanted}, got {}",
                        got.unwrap_or("not set (a dependency is missing?)")
                    )
                })
            })
            .collect()
    }
}

/// `CONFIG_X` from `# CONFIG_X is not set`.
fn off_option(line: &str) -> Option<&str> {
    let name = line
        .strip_prefix('#')?
        .trim_start()
        .strip_suffix(" is not set")?;
    is_option_name(name).then_some(name)
}

fn is_option_name(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}

/// The set options of a `.config` (`# ... is not set` lines mean unset, so they are absent).
fn values(config: &str) -> BTreeMap<&str, &str> {
    config
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(name, _)| is_option_name(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAGMENT: &str =
        "# why\nCONFIG_VIRTIO=y\n\nCONFIG_LOCALVERSION=\"-krunbox\"\n# CONFIG_MODULES is not set\n";

    #[test]
    fn fragments_parse_and_later_ones_override() {
        let mut options = Options::default();
        options.add(FRAGMENT).unwrap();
        options
            .add("# CONFIG_VIRTIO is not set\nCONFIG_MODULES=y")
            .unwrap();
        assert_eq!(options.0["CONFIG_VIRTIO"], Wanted::Off);
        assert_eq!(options.0["CONFIG_MODULES"], Wanted::Value("y".into()));
        assert_eq!(
            options.0["CONFIG_LOCALVERSION"],
            Wanted::Value("\"-krunbox\"".into())
        );
    }

    #[test]
    fn garbage_lines_are_rejected_with_their_number() {
        let err = Options::default()
            .add("CONFIG_A=y\nVIRTIO=y\n")
            .unwrap_err();
        assert_eq!(err.line, 2);
        assert!(Options::default().add("CONFIG_A=\n").is_err());
        assert!(Options::default().add("config_a=y\n").is_err());
    }

    #[test]
    fn every_option_that_did_not_stick_is_reported() {
        let mut options = Options::default();
        options.add(FRAGMENT).unwrap();
        let good =
            "CONFIG_VIRTIO=y\nCONFIG_LOCALVERSION=\"-krunbox\"\n# CONFIG_MODULES is not set\n";
        assert!(options.mismatches(good).is_empty());
        let bad = "# CONFIG_VIRTIO is not set\nCONFIG_LOCALVERSION=\"\"\nCONFIG_MODULES=y\n";
        let mismatches = options.mismatches(bad);
        assert_eq!(mismatches.len(), 3, "{mismatches:?}");
        assert!(mismatches[2].starts_with("CONFIG_VIRTIO: wanted y, got not set"));
        assert!(mismatches[1].contains("CONFIG_MODULES: wanted not set, got y"));
        // An option missing from .config altogether (its menu is hidden) is "not set" too.
        assert_eq!(
            options
                .mismatches("CONFIG_LOCALVERSION=\"-krunbox\"\n")
                .len(),
            1
        );
    }
}
