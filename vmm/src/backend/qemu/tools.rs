//! The host programs the QEMU backend runs, each overridable by an environment variable.

use std::path::PathBuf;

use crate::paths::find_program;

/// A host program the backend needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// qemu-system-x86_64.
    Qemu,
    /// virtiofsd, the Rust one (1.x: read-only shares and id mapping at the host; QEMU's C
    /// virtiofsd has neither, see `virtiofs.rs`).
    Virtiofsd,
    /// vhost-device-vsock (a Rust crate, `cargo install vhost-device-vsock`).
    VhostDeviceVsock,
}

impl Tool {
    /// Every tool.
    pub const ALL: [Tool; 3] = [Tool::Qemu, Tool::Virtiofsd, Tool::VhostDeviceVsock];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qemu => "qemu-system-x86_64",
            Self::Virtiofsd => "virtiofsd",
            Self::VhostDeviceVsock => "vhost-device-vsock",
        }
    }

    /// The environment variable that overrides where it is.
    pub fn env(self) -> &'static str {
        match self {
            Self::Qemu => "KRUNBOX_QEMU",
            Self::Virtiofsd => "KRUNBOX_VIRTIOFSD",
            Self::VhostDeviceVsock => "KRUNBOX_VHOST_DEVICE_VSOCK",
        }
    }

    /// How to install it on Debian/Ubuntu.
    pub fn install_hint(self) -> &'static str {
        match self {
            Self::Qemu => "apt-get install qemu-system-x86",
            Self::Virtiofsd => {
                "apt-get install libseccomp-dev libcap-ng-dev && cargo install --locked virtiofsd --version 1.14.0 (or the virtiofsd package, 1.10 or newer)"
            }
            Self::VhostDeviceVsock => "cargo install --locked vhost-device-vsock --version 0.3.0",
        }
    }

    fn candidates(self) -> &'static [&'static str] {
        match self {
            Self::Qemu => &["qemu-system-x86_64"],
            // Not /usr/lib/qemu/virtiofsd: that is QEMU's C one.
            Self::Virtiofsd => &["virtiofsd", "/usr/libexec/virtiofsd"],
            Self::VhostDeviceVsock => &["vhost-device-vsock"],
        }
    }

    /// Where it is.
    pub fn locate(self) -> Result<PathBuf, String> {
        if let Some(path) = std::env::var_os(self.env()).filter(|v| !v.is_empty()) {
            let path = PathBuf::from(path);
            return find_program(&path.to_string_lossy())
                .ok_or_else(|| format!("{}={} is not an executable", self.env(), path.display()));
        }
        self.candidates()
            .iter()
            .find_map(|c| find_program(c))
            .ok_or_else(|| {
                format!(
                    "{} not found (install: {})",
                    self.name(),
                    self.install_hint()
                )
            })
    }
}
