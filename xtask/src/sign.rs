//! `cargo xtask sign`: gives the `krunbox` binary the entitlement macOS requires to use
//! Hypervisor.framework (`com.apple.security.hypervisor`), which libkrun needs there.
//!
//! It writes the entitlements plist to `target/krunbox.entitlements` and signs the binary once,
//! in place, ad hoc (`-`) unless `--identity` names a certificate:
//!
//! - on macOS with Apple's `codesign --force --sign <identity> --entitlements <plist>`;
//! - elsewhere (a macOS binary cross-built with `--target aarch64-apple-darwin`) with
//!   `rcodesign sign --entitlements-xml-path <plist>` from the apple-codesign project
//!   (`cargo install apple-codesign`), when it is on PATH; without it, this fails and says so.
//!
//! One signature per build is enough: every VM's VMM process is the same `krunbox` binary
//! re-executed in a hidden mode, so nothing is copied or signed per sandbox (a copied binary
//! would keep its signature, but copies per sandbox would cost disk and hide which build runs).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::workspace;

/// The entitlements: only the hypervisor one. No hardened runtime is requested, so library
/// validation does not apply and libkrun can load libkrunfw.
const ENTITLEMENTS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>com.apple.security.hypervisor</key>
    <true/>
</dict>
</plist>
"#;

/// The entitlement that must show up in the signature.
const HYPERVISOR: &str = "com.apple.security.hypervisor";

/// Options of `cargo xtask sign`.
#[derive(clap::Args)]
pub struct Args {
    /// The binary to sign (default: target/<profile>/krunbox on macOS,
    /// target/aarch64-apple-darwin/<profile>/krunbox elsewhere).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// The cargo profile whose krunbox to sign.
    #[arg(long, default_value = "debug")]
    profile: String,
    /// Signing identity for codesign (default `-`: ad hoc, enough to run locally;
    /// distribution needs a real identity).
    #[arg(long, default_value = "-")]
    identity: String,
}

/// Writes the plist and signs the binary, or says why there is nothing to sign.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let target = workspace::target_dir();
    let plist = target.join("krunbox.entitlements");
    std::fs::create_dir_all(&target).with_context(|| format!("create {}", target.display()))?;
    std::fs::write(&plist, ENTITLEMENTS).with_context(|| format!("write {}", plist.display()))?;
    println!("entitlements: {}", plist.display());

    let macos = cfg!(target_os = "macos");
    let binary = args.binary.clone().unwrap_or_else(|| {
        if macos {
            target.join(&args.profile).join("krunbox")
        } else {
            target
                .join("aarch64-apple-darwin")
                .join(&args.profile)
                .join("krunbox")
        }
    });
    if !binary.is_file() {
        if !macos && args.binary.is_none() {
            println!(
                "nothing to sign: only macOS binaries need {HYPERVISOR}, and there is no \
                 cross-built {}",
                binary.display()
            );
            return Ok(());
        }
        bail!(
            "{} does not exist: build it first ({})",
            binary.display(),
            if macos {
                "`cargo build -p krunbox`"
            } else {
                "`cargo build -p krunbox --target aarch64-apple-darwin`, which needs a macOS SDK and linker"
            }
        );
    }
    if macos {
        codesign(&binary, &plist, &args.identity)
    } else if which("rcodesign") {
        rcodesign(&binary, &plist, &args.identity)
    } else {
        bail!(
            "neither codesign (macOS) nor rcodesign is available: on Linux install rcodesign \
             (`cargo install apple-codesign`) and run this again, or sign on the Mac with \
             `codesign --force --sign - --entitlements {} krunbox`",
            plist.display()
        )
    }
}

fn codesign(binary: &Path, plist: &Path, identity: &str) -> anyhow::Result<()> {
    workspace::run(
        Command::new("codesign")
            .args(["--force", "--sign", identity, "--entitlements"])
            .arg(plist)
            .arg(binary),
    )?;
    let shown = Command::new("codesign")
        .args(["--display", "--entitlements", "-", "--xml"])
        .arg(binary)
        .output()
        .context("run codesign --display")?;
    let text = String::from_utf8_lossy(&shown.stdout);
    if !text.contains(HYPERVISOR) {
        bail!(
            "{} was signed but codesign does not show {HYPERVISOR}: {text}",
            binary.display()
        );
    }
    println!("signed {} with {HYPERVISOR}", binary.display());
    Ok(())
}

fn rcodesign(binary: &Path, plist: &Path, identity: &str) -> anyhow::Result<()> {
    if identity != "-" {
        bail!("with rcodesign only ad-hoc signing is done here; pass the certificate options to rcodesign yourself");
    }
    workspace::run(
        Command::new("rcodesign")
            .args(["sign", "--entitlements-xml-path"])
            .arg(plist)
            .arg(binary),
    )?;
    let shown = Command::new("rcodesign")
        .arg("print-signature-info")
        .arg(binary)
        .output()
        .context("run rcodesign print-signature-info")?;
    if !String::from_utf8_lossy(&shown.stdout).contains(HYPERVISOR) {
        bail!(
            "{} was signed but rcodesign does not show {HYPERVISOR}",
            binary.display()
        );
    }
    println!("signed {} with {HYPERVISOR} (ad hoc)", binary.display());
    Ok(())
}

fn which(program: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|dir| dir.join(program).is_file())
}
