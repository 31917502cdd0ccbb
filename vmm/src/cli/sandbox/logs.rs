//! `krunbox logs`: a sandbox's console and network decisions.

use crate::io_error::io;
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
    /// With --network: `text` (one line per decision), or `json` (one object per decision:
    /// timestamp, sandbox, proto, source, destination, name, decision, rule, message).
    #[arg(long, value_enum, requires = "network", default_value_t = NetworkLogFormat::Text)]
    pub format: NetworkLogFormat,
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// How `logs --network` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkLogFormat {
    /// One line per decision: its time and what happened.
    Text,
    /// The records as they are kept: one JSON object per line.
    Json,
}

/// A line of a sandbox's network log as `format` prints it; `None` to leave it out. The log
/// holds JSON records; a line that is not one (an older sandbox's text log) is printed as
/// text and left out of JSON.
fn network_line(line: &str, format: NetworkLogFormat) -> Option<String> {
    let record = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .filter(serde_json::Value::is_object);
    match (format, record) {
        (NetworkLogFormat::Json, Some(_)) => Some(line.to_owned()),
        (NetworkLogFormat::Json, None) => None,
        (NetworkLogFormat::Text, Some(record)) => Some(format!(
            "{} {}",
            record["timestamp"].as_str().unwrap_or("-"),
            record["message"].as_str().unwrap_or_default()
        )),
        (NetworkLogFormat::Text, None) => Some(line.to_owned()),
    }
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
        Err(source) => return Err(SandboxError::from(io("open", &path)(source)).into()),
    };
    let mut out = std::io::stdout().lock();
    let print_err = |source| SandboxError::from(io("print", &path)(source));
    // The network log is read in whole lines (a partial last line waits for the rest).
    let mut pending = String::new();
    let mut copy = |file: &mut std::fs::File, out: &mut std::io::StdoutLock<'_>| {
        if !args.network {
            return std::io::copy(file, out).map(drop).map_err(print_err);
        }
        std::io::Read::read_to_string(file, &mut pending).map_err(print_err)?;
        let complete = pending.rfind('\n').map_or(0, |at| at + 1);
        for line in pending[..complete].lines() {
            if let Some(shown) = network_line(line, args.format) {
                writeln!(out, "{shown}").map_err(print_err)?;
            }
        }
        pending.drain(..complete);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_records_print_as_text_or_as_they_are() {
        let record = r#"{"timestamp":"2026-12-01T18:00:00Z","message":"tcp a -> b: deny (x)","decision":"deny"}"#;
        assert_eq!(
            network_line(record, NetworkLogFormat::Text).as_deref(),
            Some("2026-12-01T18:00:00Z tcp a -> b: deny (x)")
        );
        assert_eq!(
            network_line(record, NetworkLogFormat::Json).as_deref(),
            Some(record)
        );
        let old = "2026-01-01T00:00:00Z INFO egress: tcp a -> b: allow (y)";
        assert_eq!(
            network_line(old, NetworkLogFormat::Text).as_deref(),
            Some(old)
        );
        assert_eq!(network_line(old, NetworkLogFormat::Json), None);
    }
}
