//! An OCI bundle's `config.json` as `krunbox run`'s arguments: the container is a micro-VM
//! whose root filesystem is the bundle's root, shared writable, and whose guest-init runs the
//! bundle's process.
//!
//! What a VM runtime takes from the config, and what it leaves:
//! - `root.path`, `process.args/env/cwd/user/terminal`, `hostname`: as given (the user's
//!   `additionalGids` as `--group-add`).
//! - `mounts` of type `bind` (an engine's `-v`): shared with the guest (read-only with `ro`);
//!   the rest (`/proc`, `/dev`, `/sys`, tmpfs, mqueue, cgroup, ...) the guest kernel makes for
//!   itself.
//! - `linux.resources.memory.limit` → guest memory; `linux.resources.cpu.quota/period` →
//!   vCPUs (rounded up).
//! - `process.rlimits`: set on the process in the guest (`--ulimit`), as runc sets them.
//! - `process.capabilities` (all five sets) and `process.noNewPrivileges`: set on the process
//!   in the guest (`--capabilities`, `--security-opt no-new-privileges`), as runc sets them.
//! - Namespaces, seccomp, cgroups paths and hooks are for a shared kernel: the VM boundary
//!   replaces them, so they are not applied inside the guest.
//! - Network: krunbox's own gateway (egress to anywhere, as a container's default), not the
//!   engine's network namespace; annotations `io.krunbox.network` (`user`, `none`) choose.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// Annotation: the guest's network mode.
pub const NETWORK_ANNOTATION: &str = "io.krunbox.network";
/// The guest memory when the config sets no limit, MiB.
const DEFAULT_MEMORY_MIB: u64 = 512;
/// The least guest memory krunbox boots with, MiB.
const MIN_MEMORY_MIB: u64 = 128;

/// Why a bundle cannot run.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// config.json is missing or malformed.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A part of the config a VM runtime cannot honour.
    #[error("config.json: {0}")]
    Unsupported(String),
}

/// What `create` keeps of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// `krunbox run`'s arguments (after `run`), up to and including the command; empty when
    /// the config has no process (`start` then fails).
    pub run_args: Vec<String>,
    /// The annotations, for `state`.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// Whether the process wants a terminal.
    pub terminal: bool,
}

/// Reads `BUNDLE/config.json`.
pub fn load(bundle: &Path) -> Result<Container, BundleError> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| BundleError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    container(bundle, &spec)
}

/// The container of `spec`, whose relative paths are relative to `bundle`.
pub fn container(bundle: &Path, spec: &Spec) -> Result<Container, BundleError> {
    check_version(spec.version())?;
    let annotations: std::collections::BTreeMap<String, String> = spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    // The spec lets a config have no process until `start`, which must then fail.
    let Some(process) = spec.process().as_ref() else {
        return Ok(Container {
            run_args: Vec::new(),
            annotations,
            terminal: false,
        });
    };
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(BundleError::Unsupported("process.args is empty".into()));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| BundleError::Unsupported("no root filesystem".into()))?;
    let root_path = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };

    let mut run = Vec::new();
    let mut opt = |name: &str, value: String| run.push(format!("--{name}={value}"));
    for variable in process.env().clone().unwrap_or_default() {
        if variable.contains('=') {
            opt("env", variable);
        }
    }
    opt("workdir", process.cwd().display().to_string());
    let user = process.user();
    opt("user", format!("{}:{}", user.uid(), user.gid()));
    for gid in user.additional_gids().clone().unwrap_or_default() {
        opt("group-add", gid.to_string());
    }
    let mut limited = std::collections::BTreeSet::new();
    for limit in process.rlimits().clone().unwrap_or_default() {
        let checked = krunbox_protocol::rlimit::named_limit(
            &limit.typ().to_string(),
            limit.soft(),
            limit.hard(),
        )
        .map_err(|e| BundleError::Unsupported(format!("process.rlimits: {e}")))?;
        // The runtime spec: a type given twice is an error.
        if !limited.insert(checked.resource) {
            return Err(BundleError::Unsupported(format!(
                "process.rlimits: {} is given twice",
                limit.typ()
            )));
        }
        let name = krunbox_protocol::rlimit::resource_name(checked.resource).unwrap_or_default();
        opt(
            "ulimit",
            format!("{name}={}:{}", checked.soft, checked.hard),
        );
    }
    if let Some(capabilities) = process.capabilities() {
        opt("capabilities", capability_sets(capabilities)?.to_string());
    }
    if process.no_new_privileges() == Some(true) {
        opt("security-opt", "no-new-privileges".into());
    }
    if let Some(hostname) = spec.hostname() {
        if !hostname.is_empty() {
            opt("hostname", hostname.clone());
        }
    }
    for mount in spec.mounts().clone().unwrap_or_default() {
        let bind = mount.typ().as_deref() == Some("bind")
            || mount
                .options()
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
        let Some(source) = mount.source() else {
            continue;
        };
        let destination = mount.destination();
        // The engine's own files (/etc/hosts, resolv.conf, hostname, /dev/shm, secrets) are
        // the guest's to make.
        let engine_file = [
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/run/.containerenv",
        ]
        .iter()
        .any(|f| destination == Path::new(f))
            || destination.starts_with("/dev")
            || destination.starts_with("/proc")
            || destination.starts_with("/sys")
            || destination.starts_with("/run/secrets");
        if !bind || engine_file || !source.is_dir() {
            continue;
        }
        let read_only = mount
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "ro"));
        opt(
            "volume",
            format!(
                "{}:{}{}",
                source.display(),
                destination.display(),
                if read_only { ":ro" } else { "" }
            ),
        );
    }
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let memory_mib = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|limit| *limit > 0)
        .map(|limit| (limit as u64 / (1024 * 1024)).max(MIN_MEMORY_MIB))
        .unwrap_or(DEFAULT_MEMORY_MIB);
    opt("memory", memory_mib.to_string());
    let cpus = resources
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| Some((c.quota()?, c.period()?)))
        .filter(|(quota, period)| *quota > 0 && *period > 0)
        .map(|(quota, period)| (quota as u64).div_ceil(period).clamp(1, 64))
        .unwrap_or(1);
    opt("cpus", cpus.to_string());
    if let Some(mode) = annotations.get(NETWORK_ANNOTATION) {
        opt("network", mode.clone());
    }
    let terminal = process.terminal().unwrap_or(false);
    if terminal {
        run.push("--tty".into());
        run.push("--interactive".into());
    }
    run.push("--no-pool".into());
    // The image (an absolute directory: `create` made the bundle's path absolute), then the
    // command, which is all after `--`.
    run.push(root_path.display().to_string());
    run.push("--".into());
    run.extend(args);
    Ok(Container {
        run_args: run,
        annotations,
        terminal,
    })
}

/// `ociVersion` must be a 1.x release (`1.0.2`, `1.1.0-rc.1`): the spec's own rule, "invalid
/// or unsupported values MUST generate an error".
fn check_version(version: &str) -> Result<(), BundleError> {
    let release = version.split(['-', '+']).next().unwrap_or_default();
    let numbers: Vec<&str> = release.split('.').collect();
    let numeric = numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if numeric && numbers[0] == "1" {
        return Ok(());
    }
    Err(BundleError::Unsupported(format!(
        "ociVersion {version:?} is not a 1.x version of the runtime spec"
    )))
}

/// The config's capability sets as masks (a set it leaves out is empty, as runc has it).
fn capability_sets(
    config: &oci_spec::runtime::LinuxCapabilities,
) -> Result<krunbox_protocol::messages::CapabilitySets, BundleError> {
    let mask = |set: &Option<oci_spec::runtime::Capabilities>| {
        set.iter().flatten().try_fold(0u64, |mask, capability| {
            // The config's own spelling (CAP_CHOWN), which the protocol's table knows.
            let name = serde_json::to_value(capability)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            krunbox_protocol::capability::number(&name)
                .map(|bit| mask | 1 << bit)
                .ok_or_else(|| {
                    BundleError::Unsupported(format!(
                        "process.capabilities: {capability:?} is not known to krunbox"
                    ))
                })
        })
    };
    let sets = krunbox_protocol::messages::CapabilitySets {
        bounding: mask(config.bounding())?,
        effective: mask(config.effective())?,
        permitted: mask(config.permitted())?,
        inheritable: mask(config.inheritable())?,
        ambient: mask(config.ambient())?,
    };
    sets.check()
        .map_err(|e| BundleError::Unsupported(format!("process.capabilities: {e}")))?;
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_podman_config_becomes_run_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let spec = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 1000, "gid": 100, "additionalGids": [5, 27] },
                "args": ["sh", "-c", "echo hi"],
                "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024 }],
                "capabilities": {
                    "bounding": ["CAP_CHOWN", "CAP_KILL"],
                    "effective": ["CAP_KILL"],
                    "permitted": ["CAP_KILL", "CAP_NET_RAW"],
                    "inheritable": ["CAP_NET_RAW"],
                    "ambient": ["CAP_NET_RAW"]
                },
                "noNewPrivileges": true,
                "env": ["PATH=/bin", "TERM=xterm"],
                "cwd": "/srv"
            },
            "root": { "path": "rootfs" },
            "hostname": "c1",
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "ro"] },
                { "destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["bind"] }
            ],
            "linux": { "resources": { "memory": { "limit": 805306368 }, "cpu": { "quota": 150000, "period": 100000 } } }
        }));
        let container = container(Path::new("/b"), &spec).unwrap();
        assert_eq!(
            container.run_args,
            [
                "--env=PATH=/bin",
                "--env=TERM=xterm",
                "--workdir=/srv",
                "--user=1000:100",
                "--group-add=5",
                "--group-add=27",
                "--ulimit=nofile=1024:2048",
                "--capabilities=bounding=CAP_CHOWN,CAP_KILL;effective=CAP_KILL;\
                 permitted=CAP_KILL,CAP_NET_RAW;inheritable=CAP_NET_RAW;ambient=CAP_NET_RAW",
                "--security-opt=no-new-privileges",
                "--hostname=c1",
                &format!("--volume={}:/data:ro", data.display()),
                "--memory=768",
                "--cpus=2",
                "--no-pool",
                "/b/rootfs",
                "--",
                "sh",
                "-c",
                "echo hi",
            ]
        );
    }

    #[test]
    fn only_a_1_x_oci_version_is_taken() {
        for good in ["1.0.0", "1.0.2-dev", "1.2.0+build"] {
            assert!(check_version(good).is_ok(), "{good}");
        }
        for bad in ["invalid", "", "2.0.0", "1.0", "1.x.0", "1..0"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_soft_limit_above_the_hard_one_or_a_limit_given_twice_is_refused() {
        let above = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "user": { "uid": 0, "gid": 0 }, "args": ["true"], "cwd": "/",
                         "rlimits": [{ "type": "RLIMIT_NPROC", "hard": 5, "soft": 10 }] },
            "root": { "path": "r" }
        }));
        let refused = container(Path::new("/b"), &above).unwrap_err().to_string();
        assert!(
            refused.contains("nproc") || refused.contains("NPROC"),
            "{refused}"
        );
        let twice = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "user": { "uid": 0, "gid": 0 }, "args": ["true"], "cwd": "/",
                         "rlimits": [{ "type": "RLIMIT_CORE", "hard": 5, "soft": 1 },
                                     { "type": "RLIMIT_CORE", "hard": 6, "soft": 2 }] },
            "root": { "path": "r" }
        }));
        let refused = container(Path::new("/b"), &twice).unwrap_err().to_string();
        assert!(refused.contains("twice"), "{refused}");
    }

    #[test]
    fn a_config_without_a_process_has_nothing_to_run() {
        let bare = spec(serde_json::json!({ "ociVersion": "1.0.2", "root": { "path": "r" } }));
        assert!(container(Path::new("/b"), &bare)
            .unwrap()
            .run_args
            .is_empty());
        let empty = spec(
            serde_json::json!({ "ociVersion": "1.0.2", "root": { "path": "r" },
            "process": { "user": { "uid": 0, "gid": 0 }, "args": [], "cwd": "/" } }),
        );
        assert!(matches!(
            container(Path::new("/b"), &empty),
            Err(BundleError::Unsupported(_))
        ));
    }
}
