//! `cargo xtask build-init`: the static guest agent for x86_64 and aarch64 guests.
//!
//! Both are plain `cargo build --target <arch>-unknown-linux-musl` runs linked by rust-lld
//! (see .cargo/config.toml), so no cross C toolchain is needed. The results are copied to
//! `target/guest-init/<arch>/guest-init`, where krunbox looks for them.

use std::path::PathBuf;

use anyhow::Context;

use crate::workspace;

/// Guest architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// x86_64 guests (Linux hosts, the QEMU backend).
    X86_64,
    /// aarch64 guests (Apple Silicon, ARM Linux hosts).
    Aarch64,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Which architectures (default: both).
    #[arg(long = "arch", value_enum)]
    arches: Vec<Arch>,
    /// Build in debug mode instead of release.
    #[arg(long)]
    debug: bool,
}

impl Args {
    /// A release build for guests of this machine's architecture: the agent a guest runs,
    /// which also runs here in host mode (it is static).
    pub fn host() -> Self {
        let arch = if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        };
        Self {
            arches: vec![arch],
            debug: false,
        }
    }

    /// A release build for x86_64 guests only (what the QEMU backend boots).
    pub fn x86_64() -> Self {
        Self {
            arches: vec![Arch::X86_64],
            debug: false,
        }
    }
}

/// Builds guest-init and returns the installed binaries.
pub fn run(args: &Args) -> anyhow::Result<Vec<PathBuf>> {
    let arches = if args.arches.is_empty() {
        vec![Arch::X86_64, Arch::Aarch64]
    } else {
        args.arches.clone()
    };
    let profile = if args.debug { "debug" } else { "release" };
    let mut installed = Vec::new();
    for arch in arches {
        let triple = format!("{}-unknown-linux-musl", arch.name());
        let mut cmd = workspace::cargo();
        cmd.args(["build", "-p", "guest-init", "--target", &triple]);
        if !args.debug {
            cmd.arg("--release");
        }
        workspace::run(&mut cmd)?;
        let built = workspace::target_dir()
            .join(&triple)
            .join(profile)
            .join("guest-init");
        let dest_dir = workspace::target_dir().join("guest-init").join(arch.name());
        std::fs::create_dir_all(&dest_dir)
            .with_context(|| format!("create {}", dest_dir.display()))?;
        let dest = dest_dir.join("guest-init");
        // Beside it, then renamed over it: a running agent (a benchmark's, a VM's being
        // started) keeps its own file, where copying onto it fails with ETXTBSY.
        let staged = dest_dir.join(".guest-init.new");
        std::fs::copy(&built, &staged)
            .with_context(|| format!("copy {} to {}", built.display(), staged.display()))?;
        std::fs::rename(&staged, &dest)
            .with_context(|| format!("rename {} to {}", staged.display(), dest.display()))?;
        println!("guest-init for {}: {}", arch.name(), dest.display());
        installed.push(dest);
    }
    Ok(installed)
}
