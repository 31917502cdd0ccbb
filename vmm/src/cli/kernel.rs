//! `krunbox kernel fetch|path`: the QEMU backend's guest kernel (Debian's cloud kernel).

use crate::guest_kernel::{self, KernelError};

/// Kernel subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KernelCommand {
    /// Download and prepare Debian's current cloud kernel and its modules (with apt-get; no-op
    /// when already prepared). `krunbox run` does this on first use.
    Fetch,
    /// Print the prepared kernel's directory (exit 1 if none).
    Path,
}

/// Runs a kernel subcommand; returns the exit code.
pub fn run(command: &KernelCommand) -> Result<i32, KernelError> {
    let data = crate::paths::data_dir()?;
    match command {
        KernelCommand::Fetch => {
            let kernel = guest_kernel::fetch(&data)?;
            println!(
                "kernel {} ready: {} ({} modules)",
                kernel.abi,
                kernel.vmlinuz.display(),
                kernel.modules.len()
            );
            Ok(0)
        }
        KernelCommand::Path => match guest_kernel::prepared(&data) {
            Some(kernel) => {
                println!("{}", kernel.dir.display());
                Ok(0)
            }
            None => {
                eprintln!("no kernel prepared yet: run `krunbox kernel fetch`");
                Ok(1)
            }
        },
    }
}
