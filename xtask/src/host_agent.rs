//! guest-init started in host mode (`--listen unix:PATH`) for the demo and benchmarks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::workspace;

/// A running host-mode agent; killed when dropped, however the caller ends.
pub struct HostAgent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl HostAgent {
    /// Builds guest-init (release, host target) and starts it on a socket in a temp dir.
    pub fn start() -> anyhow::Result<Self> {
        workspace::run(workspace::cargo().args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "guest-init",
        ]))?;
        let binary = workspace::target_dir().join("release").join("guest-init");
        let dir = tempfile::tempdir().context("create a temporary directory")?;
        let socket = dir.path().join("agent.sock");
        let child = Command::new(&binary)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(["--log", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        Ok(Self { child, dir, socket })
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
