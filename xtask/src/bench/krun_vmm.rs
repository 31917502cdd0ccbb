//! The libkrun VMM child without a VM (`krunbox __krun-vmm RUNDIR --no-enter`): what a libkrun
//! VM costs before the guest's first instruction — re-executing krunbox, reading the
//! configuration, a libkrun context (libkrunfw dlopened) and every `krun_*` call with guest-init
//! as the overlay file — and what stopping it costs (lifeline closed → process gone, run
//! directory removed). Runs on any Linux host with libkrunfw: nothing is entered.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::table::{millis, percentile, Table};
use crate::workspace;

pub fn run(iterations: usize) -> anyhow::Result<()> {
    // What users run: a debug krunbox timed its own debug code along with libkrun's.
    let krunbox = workspace::release_krunbox()?;
    let target = workspace::target_dir();
    let scratch = tempfile::tempdir().context("create a scratch directory")?;
    // The agent's size matters (libkrun serves it from memory): the real one when built.
    let built = target.join("guest-init/x86_64/guest-init");
    let guest_init = if built.is_file() {
        built
    } else {
        let stand_in = scratch.path().join("guest-init");
        std::fs::write(&stand_in, vec![0u8; 2 << 20]).context("write a stand-in agent")?;
        stand_in
    };
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).context("create the root directory")?;

    let mut configured = Vec::with_capacity(iterations);
    let mut stopped = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let dir = scratch.path().join(format!("vm{i}"));
        std::fs::create_dir(&dir).context("create a run directory")?;
        write_config(&dir, &root, &guest_init)?;
        let started = Instant::now();
        let mut child = Command::new(&krunbox)
            .arg("__krun-vmm")
            .arg(&dir)
            .arg("--no-enter")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("run {}", krunbox.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("the child's stdout")?)
            .read_line(&mut line)
            .context("read the child's event")?;
        if !line.contains("\"configured\"") {
            let _ = child.kill();
            bail!("the VMM child did not configure libkrun: {line}");
        }
        configured.push(started.elapsed());
        let stopping = Instant::now();
        drop(child.stdin.take());
        child.wait().context("wait for the VMM child")?;
        while dir.exists() {
            if stopping.elapsed() > Duration::from_secs(10) {
                bail!("{} was not removed", dir.display());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        stopped.push(stopping.elapsed());
    }
    configured.sort();
    stopped.sort();
    let mut table = Table::new(&["step", "p50", "p99"]);
    for (step, samples) in [
        ("spawn + configure libkrun (no VM)", &configured),
        ("lifeline closed -> gone, dir removed", &stopped),
    ] {
        table.row(vec![
            step.into(),
            millis(percentile(samples, 50.0)),
            millis(percentile(samples, 99.0)),
        ]);
    }
    table.print(&format!(
        "libkrun VMM child, {iterations} runs (guest-init {} bytes)",
        std::fs::metadata(&guest_init).map(|m| m.len()).unwrap_or(0)
    ));
    Ok(())
}

fn write_config(dir: &Path, root: &Path, guest_init: &Path) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "run_dir": dir,
        "cpus": 1,
        "memory_mib": 512,
        "root": root,
        "root_read_only": false,
        "shares": [],
        "guest_init": guest_init,
        "kernel": null,
        "network": "Tsi",
        "net_socket": dir.join("net.sock"),
        "agent_port": krunbox_protocol::AGENT_VSOCK_PORT,
        "agent_socket": dir.join("agent.sock"),
        "console_pipe": dir.join("console.pipe"),
        "guest_config": ["krunbox.vmm=libkrun"],
        "log_level": 0
    });
    std::fs::write(dir.join("krun-vm.json"), serde_json::to_vec(&config)?)
        .context("write krun-vm.json")
}
