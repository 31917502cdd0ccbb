//! `krunbox logs`: a sandbox's console and network decisions.

use std::io::Write;
use std::time::Duration;

use super::SandboxCliError;
use crate::sandbox::store::{Store, CONSOLE_FILE};
use crate::sandbox::SandboxError;

/// Print a sandbox's guest console: the kernel's and the guest agent's messages (of the
/// running VM, or of the last run).
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Keep printing new output until the sandbox stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print the monitor's log (starting, stopping, exit reasons) instead.
    #[arg(long)]
    pub monitor: bool,
    /// Print the network's log instead: every connection the guest tried, allowed or
    /// denied with the rule or reason, DNS answers, published connections.
    #[arg(long, conflicts_with = "monitor")]
    pub network: bool,
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `krunbox logs`.
pub fn logs(args: LogsArgs) -> Result<i32, SandboxCliError> {
    let sandbox = Store::new()?.open(&args.name)?;
    let path = if args.monitor {
        sandbox.file(crate::sandbox::store::MONITOR_LOG_FILE)
    } else if args.network {
        sandbox.file(crate::sandbox::store::NETWORK_LOG_FILE)
    } else {
        match sandbox.state()?.and_then(|s| s.console) {
            Some(live) if sandbox.monitor_alive()? => live,
            _ => sandbox.file(CONSOLE_FILE),
        }
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(SandboxError::Io {
                action: "open",
                path,
                source,
            }
            .into())
        }
    };
    let mut out = std::io::stdout().lock();
    let copy = |file: &mut std::fs::File, out: &mut std::io::StdoutLock<'_>| {
        std::io::copy(file, out).map_err(|source| SandboxError::Io {
            action: "print",
            path: path.clone(),
            source,
        })
    };
    copy(&mut file, &mut out)?;
    if args.follow {
        // The open file stays readable after the run directory goes away.
        while sandbox.monitor_alive()? {
            std::thread::sleep(Duration::from_millis(200));
            copy(&mut file, &mut out)?;
            let _ = out.flush();
        }
        copy(&mut file, &mut out)?;
    }
    Ok(0)
}
