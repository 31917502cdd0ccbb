//! Paths of the workspace and running cargo from xtask.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// The workspace root (the parent of xtask/).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// `cargo` as invoked by the user (respects `$CARGO`).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs a command, failing with its rendering when it does not succeed.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let rendered = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {rendered}"))?;
    if !status.success() {
        bail!("{rendered} failed with {status}");
    }
    Ok(())
}

/// Builds krunbox in release (what users run: benchmarks time it) and returns its path.
pub fn release_krunbox() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--quiet", "--release", "-p", "krunbox"]))?;
    Ok(target_dir().join("release/krunbox"))
}
