//! The VM settings `krunbox run` and `krunbox create` share: backend, vCPUs, memory, shared
//! directories, the SSH agent, the network, the kernel and QEMU's accelerator.

use std::path::PathBuf;

use super::net_args::NetArgs;
use super::share_args::ShareArgs;
use super::ssh_args::SshArgs;
use crate::backend::{Accel, BackendKind};

/// Which backend runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// libkrun where it can boot guests (a working KVM or macOS), QEMU otherwise.
    Auto,
    /// libkrun (KVM / Hypervisor.framework); refused with the reason where it cannot boot
    /// guests (`krunbox doctor` shows it).
    Krun,
    /// QEMU with KVM when usable, else TCG software emulation.
    Qemu,
}

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when it can run standard guests, TCG otherwise (or $KRUNBOX_ACCEL).
    Auto,
    /// Software emulation.
    Tcg,
    /// KVM.
    Kvm,
}

/// The VM's settings.
#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Which backend runs the VM.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "KRUNBOX_BACKEND")]
    pub backend: BackendChoice,
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub cpus: u8,
    /// Guest memory in MiB (an upper bound: memory the guest frees goes back to the host
    /// under QEMU, through virtio-balloon free page reporting).
    #[arg(short = 'm', long = "memory", value_name = "MiB", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(128..=65536))]
    pub memory: u32,
    /// Shared directories (-v, --workspace).
    #[command(flatten)]
    pub shares: ShareArgs,
    /// The host's SSH agent (--ssh).
    #[command(flatten)]
    pub ssh: SshArgs,
    /// The guest's network (--network, -p, --allow-host, --allow-net, ...).
    #[command(flatten)]
    pub net: NetArgs,
    /// Boot this kernel instead of the backend's default (QEMU: krunbox's own, installed by
    /// `krunbox kernel install`, else Debian's cloud kernel plus modules; libkrun:
    /// libkrunfw's). It must have virtio-pci/mmio, vsock and virtio-fs built
    /// in: no module is loaded. `cargo xtask build-kernel` builds one: its `vmlinux` boots on
    /// both backends (QEMU through PVH, libkrun as ELF), its `bzImage` on QEMU. libkrun takes
    /// an ELF vmlinux, a gzip/bzip2/zstd-compressed one or a bzImage with such a payload
    /// (x86_64), an arm64 Image or gzip EFI zboot (aarch64). The default network
    /// (a virtio-net card) works with any kernel that has virtio-net; --network tsi needs
    /// libkrunfw's kernel patches.
    #[arg(long, value_name = "PATH", env = "KRUNBOX_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// Hardware acceleration for the QEMU backend.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// Take options from the profile NAME (your ~/.config/krunbox/profiles.toml, else the
    /// project's krunbox.toml), as if given before the others: options given here win, and
    /// -e, -v and the network rules add up. See the README, "Profiles".
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// The image a profile names (set by --profile; IMAGE given here wins).
    #[arg(long, value_name = "IMAGE", hide = true)]
    pub profile_image: Option<String>,
}

impl VmArgs {
    /// The backend asked for (`None`: the automatic choice).
    /// IMAGE as given, else the profile's.
    pub fn image(&self, given: &Option<String>) -> Option<String> {
        given.clone().or_else(|| self.profile_image.clone())
    }

    pub fn backend_kind(&self) -> Option<BackendKind> {
        match self.backend {
            BackendChoice::Auto => None,
            BackendChoice::Krun => Some(BackendKind::Krun),
            BackendChoice::Qemu => Some(BackendKind::Qemu),
        }
    }

    /// QEMU's acceleration.
    pub fn accel(&self) -> Accel {
        match self.accel {
            AccelChoice::Auto => Accel::Auto,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Kvm => Accel::Kvm,
        }
    }
}
