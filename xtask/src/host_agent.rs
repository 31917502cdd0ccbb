//! guest-init started in host mode (`--listen unix:PATH`) for the demo and benchmarks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::build_init;

/// A guest-init binary to run instead of building one: to set two builds side by side.
pub const AGENT_OVERRIDE: &str = "KRUNBOX_BENCH_AGENT";

/// A running host-mode agent; killed when dropped, however the caller ends.
pub struct HostAgent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl HostAgent {
    /// Builds the guest's own guest-init (static musl, release) for this machine's
    /// architecture and starts it on a socket in a temp dir. Not a glibc build of it: musl's
    /// allocator and `memcpy` are what a guest's agent runs with, and they move bulk data at
    /// 55–75 % of glibc's speed, so a glibc agent flattered every throughput figure.
    /// `$KRUNBOX_BENCH_AGENT` names another binary to run instead.
    pub fn start() -> anyhow::Result<Self> {
        let binary = match std::env::var_os(AGENT_OVERRIDE) {
            Some(binary) => PathBuf::from(binary),
            None => build_init::run(&build_init::Args::host())?
                .pop()
                .context("build-init installed no guest-init")?,
        };
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
