//! `cargo xtask build-rootfs`: the built-in default image as an OCI image layout.
//!
//! busybox-static from Debian (`/bin/busybox`) with a link per applet, the usual top-level
//! directories (including the mount points guest-init uses: /proc, /sys, /dev, /tmp, /run)
//! and a few files in /etc, as one deterministic gzip layer (see `krunbox_image::builtin`).
//! Written to `target/rootfs/default`, where `krunbox run` without IMAGE finds it and imports
//! it into the image store: the default image takes the same path as any other image.

use std::path::PathBuf;

use anyhow::Context;

use crate::workspace;

#[derive(clap::Args)]
pub struct Args {
    /// The static busybox to put in the image.
    #[arg(long, default_value = krunbox_image::builtin::DEFAULT_BUSYBOX)]
    busybox: PathBuf,
    /// Where to write the layout (default: target/rootfs/default).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Builds the layout (replacing an older one) and returns its directory.
pub fn run(args: &Args) -> anyhow::Result<PathBuf> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace::target_dir().join("rootfs/default"));
    let parent = out
        .parent()
        .context("the output directory needs a parent")?
        .to_owned();
    std::fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
    // Built beside and swapped in, so krunbox never sees a half-written layout.
    let staged = tempfile::Builder::new()
        .prefix(".rootfs-")
        .tempdir_in(&parent)
        .with_context(|| format!("create a directory in {}", parent.display()))?;
    let layout = staged.path().join("layout");
    let image = krunbox_image::builtin::build_builtin_image_from(&args.busybox, &layout)?;
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("remove {}", out.display()))?;
    }
    std::fs::rename(&layout, &out)
        .with_context(|| format!("move the layout to {}", out.display()))?;
    println!(
        "default image: {} (manifest {}, layer {} bytes)",
        out.display(),
        image.manifest.digest,
        image.layer.size
    );
    Ok(out)
}
