//! `cargo xtask sign`: gives `krunbox` the `com.apple.security.hypervisor` entitlement, without
//! which macOS refuses Hypervisor.framework (libkrun's `hv_vm_create` fails). Ad-hoc signature
//! (`codesign -s -`): enough to run locally; distribution needs a real identity. Elsewhere it
//! does nothing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use crate::workspace;

/// The entitlements libkrun needs on macOS.
const ENTITLEMENTS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>com.apple.security.hypervisor</key>
    <true/>
</dict>
</plist>
"#;

/// Options of `cargo xtask sign`.
#[derive(clap::Args)]
pub struct Args {
    /// The binary to sign (default: target/<profile>/krunbox).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// The cargo profile whose krunbox to sign.
    #[arg(long, default_value = "debug")]
    profile: String,
}

/// Signs the binary (macOS) or says why there is nothing to do.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if !cfg!(target_os = "macos") {
        println!("nothing to sign: only macOS needs the com.apple.security.hypervisor entitlement");
        return Ok(());
    }
    let binary = args
        .binary
        .clone()
        .unwrap_or_else(|| workspace::target_dir().join(&args.profile).join("krunbox"));
    if !binary.is_file() {
        bail!(
            "{} does not exist: build it first (`cargo build -p krunbox`)",
            binary.display()
        );
    }
    let plist = workspace::target_dir().join("krunbox.entitlements");
    std::fs::write(&plist, ENTITLEMENTS)
        .with_context(|| format!("cannot write {}", plist.display()))?;
    workspace::run(
        Command::new("codesign")
            .arg("--entitlements")
            .arg(&plist)
            .args(["--force", "-s", "-"])
            .arg(&binary),
    )?;
    println!(
        "signed {} with the hypervisor entitlement",
        binary.display()
    );
    Ok(())
}
