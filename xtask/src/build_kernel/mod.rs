//! `cargo xtask build-kernel`: krunbox's own guest kernel, with every driver a guest needs
//! built in (no modules), from Debian's `linux-source-*` package and `kernel-config/`.
//!
//! Recipe, per architecture: `make tinyconfig`, merge `kernel-config/common.config` and
//! `kernel-config/<arch>.config` (scripts/kconfig/merge_config.sh), `make olddefconfig`, check
//! that every fragment option is in the final .config as written (fail naming each one that
//! is not), then build under `nice` with `-j<cores>`:
//!
//! - x86_64: `bzImage` (QEMU `-kernel`) and `vmlinux` (ELF with a PVH note: libkrun's
//!   `krun_set_kernel` format 1 = ELF, and PVH-capable VMMs);
//! - aarch64, where Debian's `gcc-aarch64-linux-gnu` is installed (or on an arm64 host): the
//!   uncompressed `Image` (libkrun format 0 = raw, QEMU `-kernel`).
//!
//! The results are cached by sha256(recipe + source package and version + fragments) outside
//! `target/` (so `cargo clean` keeps them), and a second run with nothing changed is instant:
//!
//! ```text
//! .krunbox-cache/kernel/src/...                 the Debian source (see source.rs)
//! .krunbox-cache/kernel/build-<arch>/           make O= directory, reused for incremental builds
//! .krunbox-cache/kernel/<arch>-<key>/           bzImage, vmlinux (x86_64) or Image (aarch64),
//!                                               config, release, build-info
//! .krunbox-cache/kernel/<arch> -> <arch>-<key>  the latest build (what tests and docs use)
//! ```

mod fragment;
mod source;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::workspace;
use source::SourcePackage;

/// Changes whenever the build steps below change, so older cached kernels are not reused.
const RECIPE: &str =
    "krunbox-kernel-recipe-1: tinyconfig + merge_config -m common arch + olddefconfig; \
                      x86_64: bzImage vmlinux; aarch64: Image";

/// Debian's kernel source package (bookworm's kernel series).
const DEFAULT_PACKAGE: &str = "linux-source-6.1";

/// Guest architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// x86_64: bzImage and vmlinux.
    #[value(name = "x86_64")]
    X86_64,
    /// aarch64: Image (needs gcc-aarch64-linux-gnu on a non-arm64 host).
    Aarch64,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// The kernel's ARCH=.
    fn kernel_arch(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "arm64",
        }
    }

    /// CROSS_COMPILE= when the host is another architecture.
    fn cross_compile(self) -> Option<&'static str> {
        match (self, std::env::consts::ARCH) {
            (Self::X86_64, "x86_64") | (Self::Aarch64, "aarch64") => None,
            (Self::X86_64, _) => Some("x86_64-linux-gnu-"),
            (Self::Aarch64, _) => Some("aarch64-linux-gnu-"),
        }
    }

    /// What `make` builds.
    fn make_targets(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &["bzImage", "vmlinux"],
            Self::Aarch64 => &["Image"],
        }
    }

    /// The images kept: (path in the build directory, name in the cache).
    fn images(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::X86_64 => &[("arch/x86/boot/bzImage", "bzImage"), ("vmlinux", "vmlinux")],
            Self::Aarch64 => &[("arch/arm64/boot/Image", "Image")],
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Which architectures (default: x86_64, and aarch64 when its cross compiler is installed).
    #[arg(long = "arch", value_enum)]
    arches: Vec<Arch>,
    /// The Debian source package to build.
    #[arg(long, default_value = DEFAULT_PACKAGE)]
    package: String,
    /// Parallel make jobs (default: the number of CPUs).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Where sources, build trees and built kernels are kept (default: $KRUNBOX_CACHE_DIR,
    /// else .krunbox-cache/ in the workspace).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

/// A kernel ready to boot.
#[derive(Debug)]
pub struct BuiltKernel {
    /// `<cache>/kernel/<arch>-<key>`.
    pub dir: PathBuf,
    /// `uname -r` of the kernel.
    pub release: String,
}

/// Builds (or finds cached) kernels for the requested architectures.
pub fn run(args: &Args) -> anyhow::Result<Vec<BuiltKernel>> {
    let cache = args
        .cache_dir
        .clone()
        .or_else(|| std::env::var_os("KRUNBOX_CACHE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| workspace::root().join(".krunbox-cache"))
        .join("kernel");
    let arches = if args.arches.is_empty() {
        let mut arches = vec![Arch::X86_64];
        match Arch::Aarch64.cross_compile() {
            Some(prefix) if !on_path(&format!("{prefix}gcc")) => eprintln!(
                "build-kernel: skipping aarch64 ({prefix}gcc not found; `apt-get install gcc-aarch64-linux-gnu` to build it)"
            ),
            _ => arches.push(Arch::Aarch64),
        }
        arches
    } else {
        args.arches.clone()
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let package = SourcePackage::resolve(&args.package)?;
    let mut built = Vec::new();
    for arch in arches {
        let kernel = build_one(arch, &package, &cache, jobs)
            .with_context(|| format!("building the {} kernel", arch.name()))?;
        for (_, name) in arch.images() {
            println!(
                "kernel {} {}: {}",
                arch.name(),
                kernel.release,
                kernel.dir.join(name).display()
            );
        }
        built.push(kernel);
    }
    Ok(built)
}

/// The fragments for `arch`, in merge order.
fn fragments(arch: Arch) -> [PathBuf; 2] {
    let dir = workspace::root().join("kernel-config");
    [
        dir.join("common.config"),
        dir.join(format!("{}.config", arch.name())),
    ]
}

/// sha256 of everything that determines the result, shortened.
fn cache_key(arch: Arch, package: &SourcePackage, fragments: &[(PathBuf, String)]) -> String {
    let mut hasher = Sha256::new();
    for part in [
        RECIPE,
        arch.name(),
        package.name.as_str(),
        package.version.as_str(),
    ] {
        hasher.update(part.len().to_le_bytes());
        hasher.update(part);
    }
    for (_, text) in fragments {
        hasher.update(text.len().to_le_bytes());
        hasher.update(text);
    }
    hex::encode(&hasher.finalize()[..8])
}

fn build_one(
    arch: Arch,
    package: &SourcePackage,
    cache: &Path,
    jobs: usize,
) -> anyhow::Result<BuiltKernel> {
    let fragments: Vec<(PathBuf, String)> = fragments(arch)
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?;
            Ok((path, text))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut wanted = fragment::Options::default();
    for (path, text) in &fragments {
        wanted
            .add(text)
            .with_context(|| format!("{}", path.display()))?;
    }
    let key = cache_key(arch, package, &fragments);
    let dir = cache.join(format!("{}-{key}", arch.name()));
    if let Ok(release) = std::fs::read_to_string(dir.join("release")) {
        point_latest(cache, arch, &dir)?;
        eprintln!(
            "build-kernel: {} kernel cached ({} {}, key {key})",
            arch.name(),
            package.name,
            package.version
        );
        return Ok(BuiltKernel {
            dir,
            release: release.trim().to_owned(),
        });
    }

    check_tools(arch)?;
    let started = Instant::now();
    let tree = package.tree(cache)?;
    let out = cache.join(format!("build-{}", arch.name()));
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let step = |args: &[&str]| make(&tree, &out, arch, false, args);

    eprintln!(
        "build-kernel: configuring {} {} for {} (tinyconfig + {})",
        package.name,
        package.version,
        arch.name(),
        fragments
            .iter()
            .map(|(p, _)| p.file_name().unwrap_or_default().to_string_lossy())
            .collect::<Vec<_>>()
            .join(" + ")
    );
    workspace::run(step(&["tinyconfig"]).stdout(std::process::Stdio::null()))?;
    let mut merge = Command::new(tree.join("scripts/kconfig/merge_config.sh"));
    merge
        .arg("-m")
        .arg("-O")
        .arg(&out)
        .arg(out.join(".config"))
        .args(fragments.iter().map(|(p, _)| p))
        .current_dir(&tree)
        .stdout(std::process::Stdio::null());
    workspace::run(&mut merge)?;
    workspace::run(step(&["olddefconfig"]).stdout(std::process::Stdio::null()))?;
    let config_path = out.join(".config");
    let config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("read {}", config_path.display()))?;
    let mismatches = wanted.mismatches(&config);
    if !mismatches.is_empty() {
        bail!(
            "{} option(s) of kernel-config/ did not stick in {} (a dependency is missing or the option does not exist in this kernel):\n  {}",
            mismatches.len(),
            config_path.display(),
            mismatches.join("\n  ")
        );
    }

    eprintln!(
        "build-kernel: building {} with -j{jobs} under nice (a few minutes)",
        arch.make_targets().join(" ")
    );
    let jobs_arg = format!("-j{jobs}");
    let mut build_args = vec!["-s", jobs_arg.as_str()];
    build_args.extend_from_slice(arch.make_targets());
    workspace::run(&mut make(&tree, &out, arch, true, &build_args))?;
    let release = String::from_utf8(
        step(&["-s", "kernelrelease"])
            .output()
            .context("make kernelrelease")?
            .stdout,
    )?
    .trim()
    .to_owned();
    let seconds = started.elapsed().as_secs();

    let staging = tempfile::Builder::new()
        .prefix(".stage-")
        .tempdir_in(cache)
        .with_context(|| format!("create a directory in {}", cache.display()))?;
    for (built, name) in arch.images() {
        let from = out.join(built);
        let to = staging.path().join(name);
        std::fs::copy(&from, &to)
            .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    }
    std::fs::write(staging.path().join("config"), &config)?;
    std::fs::write(
        staging.path().join("build-info"),
        format!(
            "source: {} {}\nkey: {key}\nrelease: {release}\nbuild seconds: {seconds}\njobs: {jobs}\nrecipe: {RECIPE}\n",
            package.name, package.version
        ),
    )?;
    // Written last: its presence marks a complete entry.
    std::fs::write(staging.path().join("release"), format!("{release}\n"))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, &dir)
        .with_context(|| format!("move {} to {}", staged.display(), dir.display()))?;
    point_latest(cache, arch, &dir)?;
    eprintln!(
        "build-kernel: {} {release} built in {seconds} s",
        arch.name()
    );
    Ok(BuiltKernel { dir, release })
}

/// `make -C tree O=out ARCH=... [CROSS_COMPILE=...] args`, under `nice -n 10` when `niced`
/// (the build shares the machine with whatever else runs).
fn make(tree: &Path, out: &Path, arch: Arch, niced: bool, args: &[&str]) -> Command {
    let mut cmd = if niced {
        let mut nice = Command::new("nice");
        nice.args(["-n", "10", "make"]);
        nice
    } else {
        Command::new("make")
    };
    cmd.arg("-C")
        .arg(tree)
        .arg(format!("O={}", out.display()))
        .arg(format!("ARCH={}", arch.kernel_arch()));
    if let Some(prefix) = arch.cross_compile() {
        cmd.arg(format!("CROSS_COMPILE={prefix}"));
    }
    cmd.args(args);
    cmd
}

/// Points `<cache>/<arch>` at `dir` (atomically: a new link renamed over the old one).
fn point_latest(cache: &Path, arch: Arch, dir: &Path) -> anyhow::Result<()> {
    let link = cache.join(arch.name());
    let tmp = cache.join(format!(".{}.link", arch.name()));
    let _ = std::fs::remove_file(&tmp);
    let target = dir.file_name().context("kernel directory name")?;
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    std::fs::rename(&tmp, &link).with_context(|| format!("replace {}", link.display()))
}

/// Fails early, naming what to install, when the build tools are missing.
fn check_tools(arch: Arch) -> anyhow::Result<()> {
    let compiler = format!("{}gcc", arch.cross_compile().unwrap_or(""));
    let missing: Vec<&str> = [
        "make",
        compiler.as_str(),
        "flex",
        "bison",
        "bc",
        "perl",
        "dpkg-deb",
        "tar",
        "xz",
    ]
    .into_iter()
    .filter(|tool| !on_path(tool))
    .collect();
    if !missing.is_empty() {
        bail!(
            "missing {} (scripts/setup.sh installs the kernel build tools: make gcc flex bison bc libelf-dev libssl-dev xz-utils)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|dir| dir.join(program).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(version: &str) -> SourcePackage {
        SourcePackage {
            name: "linux-source-6.1".into(),
            version: version.into(),
        }
    }

    #[test]
    fn the_key_changes_with_the_source_the_fragments_and_the_arch() {
        let fragments = vec![(PathBuf::from("a"), "CONFIG_A=y\n".to_owned())];
        let key = cache_key(Arch::X86_64, &package("1"), &fragments);
        assert_eq!(key, cache_key(Arch::X86_64, &package("1"), &fragments));
        assert_ne!(key, cache_key(Arch::X86_64, &package("2"), &fragments));
        assert_ne!(key, cache_key(Arch::Aarch64, &package("1"), &fragments));
        let edited = vec![(PathBuf::from("a"), "CONFIG_A=n\n".to_owned())];
        assert_ne!(key, cache_key(Arch::X86_64, &package("1"), &edited));
    }

    #[test]
    fn the_checked_in_fragments_parse() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let mut options = fragment::Options::default();
            for path in fragments(arch) {
                options
                    .add(&std::fs::read_to_string(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            assert_eq!(
                options.0.get("CONFIG_MODULES"),
                Some(&fragment::Wanted::Off),
                "everything built in"
            );
            assert!(options.0.len() > 80, "{}", options.0.len());
        }
    }
}
