//! The floor under a cold `krunbox run`: raw QEMU booting the same kernel on the same machine
//! type (q35, TCG, `-cpu max`, 512 MiB, krunbox's kernel command line) straight into an
//! initramfs whose `/init` is busybox's `poweroff -f`. No devices, no agent, no image, no
//! krunbox: what is left is firmware, the kernel's own boot and QEMU's start and exit, so a
//! cold run's median over this one is what krunbox and its guest add.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use krunbox_image::newc::{Newc, DIR, FILE_EXEC};

/// busybox-static is one of `scripts/setup.sh`'s packages.
const BUSYBOX: &str = "/bin/busybox";
const QEMU: &str = "qemu-system-x86_64";

pub struct Floor {
    kernel: PathBuf,
    initramfs: tempfile::NamedTempFile,
}

impl Floor {
    /// The floor for `kernel` (an uncompressed `vmlinux`, booted by PVH as krunbox does).
    pub fn new(kernel: &Path) -> anyhow::Result<Self> {
        let initramfs = power_off_initramfs()?;
        Ok(Self {
            kernel: kernel.to_owned(),
            initramfs,
        })
    }

    /// One boot to power-off, spawn to exit.
    pub fn boot(&self) -> anyhow::Result<Duration> {
        let mut cmd = Command::new(QEMU);
        cmd.args([
            "-machine",
            "q35",
            "-m",
            "512M",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            "null",
            "-kernel",
        ])
        .arg(&self.kernel)
        .arg("-initrd")
        .arg(self.initramfs.path())
        // Krunbox's kernel words, without guest-init's own.
        .args([
            "-append",
            &krunbox_protocol::boot::QEMU_KERNEL_WORDS.join(" "),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let started = Instant::now();
        let output = cmd.output().with_context(|| format!("run {cmd:?}"))?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            bail!(
                "raw QEMU failed with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(elapsed)
    }
}

/// A newc initramfs of `/bin/busybox` and an `/init` script that powers off at once.
fn power_off_initramfs() -> anyhow::Result<tempfile::NamedTempFile> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("read {BUSYBOX} (Debian's busybox-static)"))?;
    let init = b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n";
    let file = tempfile::NamedTempFile::new().context("create the floor's initramfs")?;
    let mut archive = Newc::new(file);
    for (name, mode, data) in [
        ("bin", DIR, &b""[..]),
        ("bin/busybox", FILE_EXEC, &busybox),
        ("init", FILE_EXEC, init),
    ] {
        archive
            .entry(name, mode, data, None)
            .context("write the floor's initramfs")?;
    }
    archive.finish().context("write the floor's initramfs")
}
