//! `krunbox kernel install|fetch|path`: the QEMU backend's guest kernels (see
//! [`crate::backend::qemu::guest_kernel`]): krunbox's own, the default once installed, and Debian's cloud
//! kernel, the fallback.

use std::path::PathBuf;

use crate::backend::qemu::guest_kernel::{debian, own, KernelError};

/// Kernel subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KernelCommand {
    /// Install krunbox's own kernel from a `cargo xtask build-kernel` build directory
    /// (`.krunbox-cache/kernel/x86_64` in the source tree) for this user; the QEMU backend then
    /// boots it by default. The files are copied: the build may be removed afterwards.
    Install {
        /// The build directory (with `vmlinux` and `release`).
        #[arg(value_name = "BUILD_DIR")]
        build: PathBuf,
    },
    /// Download and prepare Debian's current cloud kernel and its modules (with apt-get; no-op
    /// when already prepared): the fallback when krunbox's own kernel is not installed, which
    /// `krunbox run` then fetches on first use.
    Fetch,
    /// Print the directory of the prepared Debian kernel (exit 1 if none).
    Path,
}

/// Runs a kernel subcommand; returns the exit code.
pub fn run(command: &KernelCommand) -> Result<i32, KernelError> {
    let data = crate::paths::data_dir()?;
    match command {
        KernelCommand::Install { build } => {
            let kernel = own::install(&data, build)?;
            println!(
                "krunbox's kernel {} installed in {}; the QEMU backend boots it by default",
                kernel.release,
                kernel.dir.display()
            );
            Ok(0)
        }
        KernelCommand::Fetch => {
            let kernel = debian::fetch(&data)?;
            println!(
                "kernel {} ready: {} ({} modules)",
                kernel.abi,
                kernel.vmlinuz.display(),
                kernel.modules.len()
            );
            Ok(0)
        }
        KernelCommand::Path => match debian::prepared(&data) {
            Some(kernel) => {
                println!("{}", kernel.dir.display());
                Ok(0)
            }
            None => {
                eprintln!("no Debian kernel prepared yet: run `krunbox kernel fetch`");
                Ok(1)
            }
        },
    }
}
