//! `cargo xtask bench`: numbers, not pass/fail. Prints tables.
//!
//! - `agent`: the guest agent in host mode on a Unix socket — exec round trip of `true`
//!   (p50/p99) next to spawning `true` directly on the host, and stdout / file throughput
//!   next to the same bytes moved on the host.
//! - `krun-vmm`: the libkrun VMM child configured through the real libkrun but never entered
//!   (spawn + configure, and stop + cleanup), the part of a libkrun VM's start that a host
//!   without a usable hypervisor can measure.
//! - `images`: krunbox-image's layer unpack against GNU `tar -xzf` of the same blobs, and its
//!   pull against `skopeo copy` from the same local docker-registry.
//! - `boot`: `krunbox run --backend qemu -- true` under TCG, boot to exit, with Debian's cloud
//!   kernel and (when built) krunbox's own kernel side by side.
//! - `backends`: libkrun against QEMU with KVM in one KVM host (`cargo xtask kvm-host`):
//!   boot → exec → exit, exec round trip, host memory per idle sandbox, as ratios.
//! - `sandboxes`: named sandboxes started in parallel (per minute) and the host memory (RSS,
//!   PSS) of each once idle.
//! - `streams`: the agent's exec round trip and stdout/put/get through a real VM (QEMU with
//!   TCG; with `--in-kvm-host`, QEMU with KVM and libkrun in a KVM host), as ratios to the
//!   same agent in host mode.

mod agent;
mod backends;
mod boot;
mod floor;
mod gvisor;
mod images;
mod krun_vmm;
mod private;
mod sandboxes;
mod streams;
mod table;
mod transfer;

use crate::workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Which suites (default: all).
    #[arg(long = "suite", value_enum)]
    suites: Vec<Suite>,
    /// Exec round trips to time; the other suites scale from it (runs: krun-vmm /10,
    /// images /100, boot /60).
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// Sandboxes started at once by the `sandboxes` suite.
    #[arg(long = "sandboxes", default_value_t = 4)]
    sandboxes: usize,
    /// Megabytes moved in each throughput measurement.
    #[arg(long, default_value_t = 256)]
    megabytes: u64,
    /// The `streams` suite in a KVM host (`cargo xtask kvm-host`): QEMU with KVM and libkrun
    /// instead of QEMU with TCG.
    #[arg(long)]
    in_kvm_host: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    /// The agent over a Unix socket, without a VM.
    Agent,
    /// The libkrun VMM child, configured but never entered.
    KrunVmm,
    /// Layer unpack vs GNU tar, pull vs skopeo (a local docker-registry).
    Images,
    /// `krunbox run -- true` under QEMU TCG, our kernel and Debian's, with each step's share.
    Boot,
    /// Named sandboxes started per minute, host memory per idle sandbox.
    Sandboxes,
    /// libkrun against QEMU with KVM, in one KVM host (runs itself inside one).
    Backends,
    /// The agent's data path through a VM against host mode.
    Streams,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) && std::env::var_os(OPTIMIZED_RUN).is_none() {
        return run_optimized();
    }
    let suites = if args.suites.is_empty() {
        vec![
            Suite::Agent,
            Suite::KrunVmm,
            Suite::Images,
            Suite::Boot,
            Suite::Sandboxes,
            Suite::Backends,
            Suite::Streams,
        ]
    } else {
        args.suites.clone()
    };
    for suite in suites {
        match suite {
            Suite::Agent => agent::run(args.iterations, args.megabytes)?,
            Suite::KrunVmm => krun_vmm::run((args.iterations / 10).max(10))?,
            Suite::Images => images::run((args.iterations / 100).max(1))?,
            Suite::Boot => boot::run((args.iterations / 60).max(1))?,
            Suite::Sandboxes => sandboxes::run(args.sandboxes.max(1))?,
            Suite::Backends => backends::run((args.iterations / 60).max(1))?,
            Suite::Streams => streams::run(
                (args.iterations / 3).max(1),
                args.megabytes,
                args.in_kvm_host,
            )?,
        }
    }
    Ok(())
}

/// Set in the environment of the optimized run [`run_optimized`] starts, so that a release
/// build with debug assertions does not start another.
const OPTIMIZED_RUN: &str = "KRUNBOX_BENCH_OPTIMIZED";

/// The suites time krunbox's own libraries in this process (the agent's client, the image
/// unpacker). Built unoptimized, as `cargo xtask` builds it, they would time the compiler's
/// debug code, not what users run (the agent suite's stdout read at half its speed). So a
/// debug xtask runs the benchmarks in a release build of itself, with the same arguments.
fn run_optimized() -> anyhow::Result<()> {
    eprintln!("bench: running in an optimized build of xtask (built once, then reused)");
    let arguments = std::env::args_os().skip_while(|argument| argument != "bench");
    workspace::run(
        workspace::cargo()
            .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
            .args(arguments)
            .env(OPTIMIZED_RUN, "1"),
    )
}
