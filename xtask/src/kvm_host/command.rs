//! The shell script the command runs as inside the KVM host: the forwarded environment (the
//! KVM host's init clears its own with `env -i`), the caller's working directory, then `exec`
//! of the command. Every word is single-quoted, so no byte of an argument is interpreted.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Variables forwarded as they are, besides every `KRUNBOX_*`: what finds programs and
/// toolchains, where cargo builds, and what tests and logs read.
const FORWARDED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TERM",
    "TZ",
    "CARGO_HOME",
    "CARGO_TARGET_DIR",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "RUST_TEST_THREADS",
];

/// The variables of `vars` (the caller's environment) that reach the command, in a stable
/// order: [`FORWARDED`], `KRUNBOX_*`, and the names in `extra`; an `extra` entry `NAME=VALUE`
/// sets the value instead.
pub fn forwarded_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    extra: &[String],
) -> Vec<(OsString, OsString)> {
    let mut selected: Vec<(OsString, OsString)> = vars
        .into_iter()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            FORWARDED.contains(&name.as_ref())
                || name.starts_with("KRUNBOX_")
                || extra.iter().any(|e| *e == name)
        })
        .collect();
    for (name, value) in extra.iter().filter_map(|e| e.split_once('=')) {
        selected.retain(|(n, _)| n != name);
        selected.push((name.into(), value.into()));
    }
    selected.sort();
    selected
}

/// `export NAME='value'` lines, `cd 'cwd'`, `exec 'arg'...`.
pub fn script(cwd: &Path, env: &[(OsString, OsString)], command: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in env {
        let mut assignment = name.clone();
        assignment.push("=");
        assignment.push(value);
        out.extend_from_slice(b"export ");
        quote_into(&mut out, &assignment);
        out.push(b'\n');
    }
    out.extend_from_slice(b"cd ");
    quote_into(&mut out, cwd.as_os_str());
    out.extend_from_slice(b" || exit 125\nexec");
    for word in command {
        out.push(b' ');
        quote_into(&mut out, word);
    }
    out.push(b'\n');
    out
}

/// `'word'`, each `'` in it written as `'\''`.
fn quote_into(out: &mut Vec<u8>, word: &OsStr) {
    out.push(b'\'');
    for &byte in word.as_bytes() {
        if byte == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(byte);
        }
    }
    out.push(b'\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(n, v)| ((*n).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn only_the_variables_that_matter_are_forwarded() {
        let env = pairs(&[
            ("PATH", "/bin"),
            ("KRUNBOX_BACKEND", "krun"),
            ("SSH_AUTH_SOCK", "/tmp/agent"),
            ("CARGO_PKG_NAME", "xtask"),
            ("MY_VAR", "1"),
            ("OTHER", "x"),
        ]);
        let extra = [
            "MY_VAR".to_owned(),
            "SET=a=b".to_owned(),
            "OTHER=y".to_owned(),
        ];
        assert_eq!(
            forwarded_env(env, &extra),
            pairs(&[
                ("KRUNBOX_BACKEND", "krun"),
                ("MY_VAR", "1"),
                ("OTHER", "y"),
                ("PATH", "/bin"),
                ("SET", "a=b"),
            ])
        );
    }

    #[test]
    fn the_script_runs_exactly_the_given_words() {
        let dir = tempfile::tempdir().unwrap();
        let env = pairs(&[("KRUNBOX_X", "it's $HOME")]);
        let command: Vec<OsString> = [
            "sh",
            "-c",
            "printf '%s|' \"$KRUNBOX_X\" \"$0\" \"$1\"; pwd",
            "a b",
            "'; exit 9",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let script = script(dir.path(), &env, &command);
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&script))
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("it's $HOME|a b|'; exit 9|{}\n", dir.path().display())
        );
    }

    #[test]
    fn a_missing_working_directory_exits_125() {
        let script = script(Path::new("/nonexistent/kvm-host"), &[], &["true".into()]);
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&script))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(125));
    }
}
