//! `cargo xtask <command>`: builds and checks that are more than one cargo invocation.

mod bench;
mod build_init;
mod build_kernel;
mod build_rootfs;
mod demo;
mod fuzz;
mod host_agent;
mod kvm_host;
mod sign;
mod workspace;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "krunbox project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the static musl guest agent (guest-init) for the guest architectures.
    BuildInit(build_init::Args),
    /// Build krunbox's guest kernel (all drivers built in, no modules) from Debian's
    /// linux-source package and kernel-config/; cached, so a second run is instant.
    BuildKernel(build_kernel::Args),
    /// Build the built-in default image (busybox-static) as an OCI image layout in
    /// target/rootfs/default, where `krunbox run` without IMAGE finds it.
    BuildRootfs(build_rootfs::Args),
    /// Fuzz every parser of untrusted bytes for a bounded time each (needs cargo-fuzz).
    Fuzz(fuzz::Args),
    /// Run a command through the guest agent in host mode (no VM) and exit with its status.
    Demo(demo::Args),
    /// Write the macOS entitlements plist (com.apple.security.hypervisor) and sign the krunbox
    /// binary with it (codesign on macOS, rcodesign elsewhere).
    Sign(sign::Args),
    /// Measure agent round trips and throughput against running the same work on the host.
    Bench(bench::Args),
    /// Run a command inside a KVM host booted under QEMU TCG (emulated AMD SVM), where the
    /// libkrun backend can boot guests; exit with its status. Run it under
    /// `flock /tmp/krunbox-e2e.lock`.
    KvmHost(kvm_host::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BuildInit(args) => build_init::run(&args).map(drop),
        Command::BuildKernel(args) => build_kernel::run(&args).map(drop),
        Command::BuildRootfs(args) => build_rootfs::run(&args).map(drop),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Sign(args) => sign::run(&args),
        Command::Demo(args) => std::process::exit(demo::run(&args)?),
        // 125 (as `krunbox run`): the harness failed, not the command.
        Command::KvmHost(args) => std::process::exit(kvm_host::run(&args).unwrap_or_else(|err| {
            eprintln!("kvm-host: {err}");
            125
        })),
    }
}
