//! `cargo xtask bench`: numbers, not pass/fail. Prints tables.
//!
//! - `agent`: the guest agent in host mode on a Unix socket — exec round trip of `true`
//!   (p50/p99) next to spawning `true` directly on the host, and stdout / file throughput
//!   next to the same bytes moved on the host.

mod agent;
mod table;

#[derive(clap::Args)]
pub struct Args {
    /// Which suites (default: all).
    #[arg(long = "suite", value_enum)]
    suites: Vec<Suite>,
    /// Exec round trips to time.
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// Megabytes moved in each throughput measurement.
    #[arg(long, default_value_t = 256)]
    megabytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    /// The agent over a Unix socket, without a VM.
    Agent,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let suites = if args.suites.is_empty() {
        vec![Suite::Agent]
    } else {
        args.suites.clone()
    };
    for suite in suites {
        match suite {
            Suite::Agent => agent::run(args.iterations, args.megabytes)?,
        }
    }
    Ok(())
}
