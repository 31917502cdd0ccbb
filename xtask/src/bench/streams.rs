//! The agent's data path through a real VM, next to the same agent in host mode: exec round
//! trip of `true` and stdout, put and get of the same bytes, through the protocol client on
//! a running sandbox's agent socket (vsock: vhost-device-vsock under QEMU, libkrun's own
//! under libkrun), so the VM's transport is what differs from the first row and the CLI's
//! own start-up is left out (the `agent` suite times the agent alone, `backends` the CLI).
//!
//! Here: QEMU with TCG, krunbox's default. With `KRUNBOX_BENCH_IN_KVM_HOST` (the suite runs
//! itself in a KVM host when asked with `--in-kvm-host`): QEMU with KVM and libkrun, on
//! krunbox's own kernel both. Each sandbox has 1 GiB so that the put file fits in its /tmp.

use std::time::Duration;

use anyhow::{bail, Context};
use krunbox_protocol::client::Client;
use krunbox_protocol::transport::AgentAddress;

use super::backends::{in_kvm_host, run_in_kvm_host};
use super::private::{built_kernel, PrivateKrunbox};
use super::table::{millis, percentile, rate, ratio, Table};
use super::transfer::{exec_round_trips, transfers, write_source, Transfers};
use crate::host_agent::HostAgent;

/// Where a put lands in the guest (its /tmp).
const GUEST_FILE: &str = "/tmp/krunbox-bench-put";

/// One row's figures.
struct Row {
    name: String,
    execs: Vec<Duration>,
    transfers: Transfers,
}

pub fn run(runs: usize, megabytes: u64, kvm_host: bool) -> anyhow::Result<()> {
    if kvm_host && !in_kvm_host() {
        PrivateKrunbox::build()?;
        built_kernel().context("krunbox's kernel is not built: cargo xtask build-kernel")?;
        // The host-mode row's agent: the one asked for, or built here.
        let agent = match std::env::var_os(crate::host_agent::AGENT_OVERRIDE) {
            Some(agent) => agent.into(),
            None => crate::build_init::run(&crate::build_init::Args::host())?
                .pop()
                .context("build-init installed no guest-init")?,
        };
        return run_in_kvm_host(
            "streams",
            &[
                "--iterations".into(),
                (runs * 3).to_string(),
                "--megabytes".into(),
                megabytes.to_string(),
                "--in-kvm-host".into(),
            ],
            &[format!(
                "{}={}",
                crate::host_agent::AGENT_OVERRIDE,
                agent.display()
            )],
        );
    }
    let setups: Vec<(&str, Vec<String>)> = if in_kvm_host() {
        let kernel = built_kernel()
            .context("krunbox's kernel is not built: cargo xtask build-kernel")?
            .to_string_lossy()
            .into_owned();
        vec![
            (
                "QEMU + KVM (vhost-device-vsock)",
                ["--backend", "qemu", "--accel", "kvm", "--kernel", &kernel]
                    .map(String::from)
                    .into(),
            ),
            (
                "libkrun (its vsock)",
                ["--backend", "krun", "--kernel", &kernel]
                    .map(String::from)
                    .into(),
            ),
        ]
    } else {
        vec![(
            "QEMU + TCG (vhost-device-vsock)",
            ["--backend", "qemu", "--accel", "tcg"]
                .map(String::from)
                .into(),
        )]
    };
    let binary = if in_kvm_host() {
        crate::workspace::target_dir().join("release/krunbox")
    } else {
        PrivateKrunbox::build()?
    };
    let krunbox = PrivateKrunbox::with_binary(binary)?;
    let bytes = megabytes * 1024 * 1024;
    let scratch = tempfile::tempdir().context("create a scratch directory")?;
    let source = scratch.path().join("payload");
    write_source(&source, bytes).context("write the payload")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;

    let agent = HostAgent::start()?;
    let host_file = agent.dir.path().join("put").display().to_string();
    let mut rows = vec![runtime.block_on(measure(
        "agent in host mode (Unix socket)".into(),
        AgentAddress::Unix(agent.socket.clone()),
        runs,
        &source,
        &host_file,
        bytes,
    ))?];
    drop(agent);
    for (name, args) in setups {
        let sandbox = format!("bench-streams-{}", std::process::id());
        let mut create: Vec<&str> = vec!["create", "--name", &sandbox, "--memory", "1024"];
        create.extend(args.iter().map(String::as_str));
        krunbox.ok(&create)?;
        let row = krunbox.ok(&["start", &sandbox]).and_then(|_| {
            let address = agent_address(&krunbox, &sandbox)?;
            runtime.block_on(measure(
                name.into(),
                address,
                runs,
                &source,
                GUEST_FILE,
                bytes,
            ))
        });
        let _ = krunbox.ok(&["rm", "-f", &sandbox]);
        rows.push(row?);
    }
    print(&rows, runs, megabytes);
    Ok(())
}

/// The running sandbox's agent address, as `krunbox inspect` records it.
fn agent_address(krunbox: &PrivateKrunbox, name: &str) -> anyhow::Result<AgentAddress> {
    let inspect: serde_json::Value =
        serde_json::from_str(&krunbox.ok(&["inspect", name])?).context("parse krunbox inspect")?;
    let Some(address) = inspect[0]["state"]["agent"].as_str() else {
        bail!("krunbox inspect {name} shows no agent address: {inspect}");
    };
    address
        .parse()
        .with_context(|| format!("the agent address {address:?}"))
}

async fn measure(
    name: String,
    address: AgentAddress,
    runs: usize,
    source: &std::path::Path,
    remote: &str,
    bytes: u64,
) -> anyhow::Result<Row> {
    let client = Client::connect_with_retry(&address, Duration::from_secs(30)).await?;
    let execs = exec_round_trips(&client, runs).await?;
    let transfers = transfers(&client, source, remote, bytes).await?;
    Ok(Row {
        name,
        execs,
        transfers,
    })
}

fn print(rows: &[Row], runs: usize, megabytes: u64) {
    let base = &rows[0];
    let p50 = |row: &Row| percentile(&row.execs, 50.0);
    let mut table = Table::new(&[
        "agent", "exec p50", "p99", "ratio", "stdout", "ratio", "put", "ratio", "get", "ratio",
    ]);
    for row in rows {
        let (t, b) = (&row.transfers, &base.transfers);
        let time_ratio =
            |ours: Duration, theirs: Duration| ratio(ours.as_secs_f64(), theirs.as_secs_f64());
        table.row(vec![
            row.name.clone(),
            millis(p50(row)),
            millis(percentile(&row.execs, 99.0)),
            time_ratio(p50(row), p50(base)),
            rate(t.bytes, t.stdout),
            time_ratio(t.stdout, b.stdout),
            rate(t.bytes, t.put),
            time_ratio(t.put, b.put),
            rate(t.bytes, t.get),
            time_ratio(t.get, b.get),
        ]);
    }
    table.print(&format!(
        "The agent's data path through a VM, {runs} execs of `true` and {megabytes} MiB each way; ratios (time) against host mode"
    ));
}
