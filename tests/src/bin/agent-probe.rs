//! `agent-probe ADDRESS -- COMMAND...`: what a hostile process inside a guest would do to
//! become root through the agent. It connects to ADDRESS (`vsock:CID:PORT`, or `unix:PATH`
//! for the control run against a host-mode agent), performs the krunbox handshake with the
//! real client and asks the agent to run COMMAND.
//!
//! Prints one line and exits 0 if the command ran (`ran: exit=N stdout=...`), 1 if any step
//! was refused (`refused: connect|handshake|exec: why`), 2 on bad usage. The adversarial
//! tests copy it into a guest's root filesystem (with the libraries `ldd` names).

use std::process::ExitCode;
use std::time::Duration;

use krunbox_protocol::client::{Client, ExecSpec};

/// Long enough for a TCG guest, short enough that a silent agent fails the probe.
const LIMIT: Duration = Duration::from_secs(20);

fn usage() -> ExitCode {
    eprintln!("usage: agent-probe vsock:CID:PORT|unix:PATH -- COMMAND...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(address), Some("--")) = (args.first(), args.get(1).map(String::as_str)) else {
        return usage();
    };
    let command = args[2..].to_vec();
    if command.is_empty() {
        return usage();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("agent-probe: no runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        tokio::time::timeout(LIMIT, probe(address, command))
            .await
            .unwrap_or_else(|_| Err(format!("timeout: nothing within {LIMIT:?}")))
    });
    match outcome {
        Ok(line) => {
            println!("ran: {line}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("refused: {why}");
            ExitCode::from(1)
        }
    }
}

async fn probe(address: &str, command: Vec<String>) -> Result<String, String> {
    let client = if let Some(path) = address.strip_prefix("unix:") {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        Client::handshake(stream).await
    } else if let Some(rest) = address.strip_prefix("vsock:") {
        let (cid, port) = rest
            .split_once(':')
            .and_then(|(cid, port)| Some((cid.parse().ok()?, port.parse().ok()?)))
            .ok_or_else(|| format!("connect: bad address {address}"))?;
        let stream = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(cid, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        Client::handshake(stream).await
    } else {
        return Err(format!("connect: bad address {address}"));
    }
    .map_err(|e| format!("handshake: {e}"))?;
    let output = client
        .exec(ExecSpec::new(command))
        .await
        .map_err(|e| format!("exec: {e}"))?
        .collect()
        .await
        .map_err(|e| format!("exec: {e}"))?;
    Ok(format!(
        "exit={:?} stdout={}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim()
    ))
}
