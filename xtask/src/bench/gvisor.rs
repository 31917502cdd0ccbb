//! The neighbour users compare with: gVisor, `podman --runtime runsc run --rm IMAGE true` on
//! krunbox's default image, with podman's storage of its own (imported once from the image's
//! OCI layout, untimed). runsc's network needs what this machine lacks, so it runs with
//! `--runtime-flag network=none --network=none`; krunbox's rows have a network.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::workspace;

/// Debian's package `runsc` (one of `scripts/setup.sh`'s packages).
const RUNSC: &str = "/usr/bin/runsc";
/// The name podman gives the default image imported from its OCI layout.
const IMAGE: &str = "localhost/krunbox-bench-default";

pub struct Gvisor {
    storage: tempfile::TempDir,
}

impl Gvisor {
    /// A private podman storage holding the default image; `None` when runsc is missing.
    pub fn new() -> anyhow::Result<Option<Self>> {
        if !Path::new(RUNSC).is_file() {
            return Ok(None);
        }
        let storage = tempfile::Builder::new()
            .prefix("krunbox-bench-podman-")
            .tempdir()
            .context("create podman's storage")?;
        let gvisor = Self { storage };
        let layout = workspace::target_dir().join("rootfs/default");
        let source = format!("oci:{}", layout.display());
        gvisor.podman(&["pull", "--quiet", &source])?;
        gvisor.podman(&["tag", &gvisor.podman(&["images", "--quiet"])?, IMAGE])?;
        // Proof that runsc, not the host's kernel, runs the container: gVisor reports its own.
        let guest = gvisor.podman(&["run", "--rm", "--network=none", IMAGE, "uname", "-r"])?;
        let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if guest == host.trim() {
            bail!("runsc ran the container on the host's kernel ({guest})");
        }
        Ok(Some(gvisor))
    }

    /// One `run --rm IMAGE true`, spawn to exit.
    pub fn run_true(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.podman(&["run", "--rm", "--network=none", IMAGE, "true"])?;
        Ok(started.elapsed())
    }

    /// `podman ARGS` on the private storage with runsc, failing with its stderr; its stdout.
    fn podman(&self, args: &[&str]) -> anyhow::Result<String> {
        let root: PathBuf = self.storage.path().join("root");
        let run = self.storage.path().join("run");
        let output = Command::new("podman")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&run)
            .args(["--runtime", RUNSC, "--runtime-flag", "network=none"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run podman")?;
        if !output.status.success() {
            bail!(
                "podman {} failed with {}: {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

impl Drop for Gvisor {
    /// podman's storage holds overlay mounts and files of other owners: podman removes it.
    fn drop(&mut self) {
        let _ = self.podman(&["system", "reset", "--force"]);
    }
}
