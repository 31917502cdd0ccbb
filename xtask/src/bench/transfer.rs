//! What one agent connection does for a coding agent, timed the same way wherever the agent
//! runs (in host mode or in a VM): exec round trips of `true`, and bulk data both ways —
//! a command's stdout, a file put and the same file got back.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use krunbox_protocol::client::{Client, ExecEvent, ExecSpec};

/// Round trips of `exec true`, each until its exit status: sorted.
pub async fn exec_round_trips(client: &Client, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let output = client
            .exec(ExecSpec::new(["true"]))
            .await?
            .collect()
            .await?;
        samples.push(started.elapsed());
        if output.status.shell_code() != 0 {
            bail!("`true` failed in the agent: {:?}", output.status);
        }
    }
    samples.sort();
    Ok(samples)
}

/// How long each transfer of [`Self::bytes`] took.
pub struct Transfers {
    pub bytes: u64,
    pub stdout: Duration,
    pub put: Duration,
    pub get: Duration,
}

/// `head -c BYTES /dev/zero`'s stdout, a put of `source` (a local file of `bytes`) to
/// `remote` and a get of `remote` back; checks that every byte arrived.
pub async fn transfers(
    client: &Client,
    source: &Path,
    remote: &str,
    bytes: u64,
) -> anyhow::Result<Transfers> {
    let started = Instant::now();
    let mut exec = client.exec(ExecSpec::new(producer(bytes))).await?;
    let mut received = 0u64;
    while let Some(event) = exec.next_event().await? {
        if let ExecEvent::Output { data, .. } = event {
            received += data.len() as u64;
        }
    }
    let stdout = started.elapsed();
    if received != bytes {
        bail!("stdout: received {received} of {bytes} bytes");
    }
    let started = Instant::now();
    let file = tokio::fs::File::open(source).await?;
    client.put(file, remote, 0o644).await?;
    let put = started.elapsed();
    let started = Instant::now();
    let (_, got) = client.get(remote, tokio::io::sink()).await?;
    let get = started.elapsed();
    if got != bytes {
        bail!("get returned {got} of {bytes} bytes");
    }
    Ok(Transfers {
        bytes,
        stdout,
        put,
        get,
    })
}

/// The command whose stdout is timed: `bytes` zeros.
pub fn producer(bytes: u64) -> [String; 4] {
    ["head", "-c", &bytes.to_string(), "/dev/zero"].map(String::from)
}

/// Writes the file that puts send.
pub fn write_source(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let len = usize::try_from(bytes)?;
    std::fs::write(path, vec![0x5au8; len])?;
    Ok(())
}
