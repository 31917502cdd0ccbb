//! The agent in host mode: what the protocol and agent cost on top of the work itself.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use krunbox_protocol::client::{Client, ExecSpec};
use krunbox_protocol::transport::AgentAddress;

use super::table::{millis, percentile, rate, ratio, Table};
use super::transfer::{exec_round_trips, producer, transfers, write_source};
use crate::host_agent::HostAgent;

pub fn run(iterations: usize, megabytes: u64) -> anyhow::Result<()> {
    let agent = HostAgent::start()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(measure(
        &agent.socket,
        agent.dir.path(),
        iterations,
        megabytes,
    ))
}

async fn measure(
    socket: &Path,
    scratch: &Path,
    iterations: usize,
    megabytes: u64,
) -> anyhow::Result<()> {
    let address = AgentAddress::Unix(socket.to_owned());
    let client = Client::connect_with_retry(&address, Duration::from_secs(10)).await?;

    // Exec round trip vs host spawn, and where it goes: the protocol's own round trip (a ping:
    // encode, socket, dispatch, reply), the exec's start (the request through the agent's
    // spawner to the child running: ExecStarted) and the rest (the child, the reaper, the exit
    // report).
    let mut agent_samples = Vec::with_capacity(iterations);
    let mut start_samples = Vec::with_capacity(iterations);
    let mut ping_samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        client.ping().await?;
        ping_samples.push(started.elapsed());
        let started = Instant::now();
        let execution = client.exec(ExecSpec::new(["true"])).await?;
        start_samples.push(started.elapsed());
        let output = execution.collect().await?;
        agent_samples.push(started.elapsed());
        if output.status.shell_code() != 0 {
            bail!("`true` failed in the agent: {:?}", output.status);
        }
    }
    let mut host_samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let status = Command::new("true")
            .status()
            .context("spawn true on the host")?;
        host_samples.push(started.elapsed());
        if !status.success() {
            bail!("`true` failed on the host");
        }
    }
    agent_samples.sort();
    host_samples.sort();
    let mut latency = Table::new(&["exec `true`", "p50", "p99", "p50 ratio"]);
    let (a50, h50) = (
        percentile(&agent_samples, 50.0),
        percentile(&host_samples, 50.0),
    );
    latency.row(vec![
        "agent over unix socket".into(),
        millis(a50),
        millis(percentile(&agent_samples, 99.0)),
        ratio(a50.as_secs_f64(), h50.as_secs_f64()),
    ]);
    latency.row(vec![
        "host posix spawn".into(),
        millis(h50),
        millis(percentile(&host_samples, 99.0)),
        "1.00x".into(),
    ]);
    latency.print(&format!("Exec round trip ({iterations} runs)"));

    ping_samples.sort();
    start_samples.sort();
    let p50 = |samples: &[Duration]| percentile(samples, 50.0);
    let mut steps = Table::new(&["step of an exec (p50)", "time", "share"]);
    let share = |part: Duration| format!("{:.0} %", 100.0 * part.as_secs_f64() / a50.as_secs_f64());
    let rest = a50.saturating_sub(p50(&start_samples));
    for (name, part) in [
        (
            "protocol round trip alone (ping: encode, socket, dispatch)",
            p50(&ping_samples),
        ),
        (
            "exec start (request -> clone, exec -> ExecStarted)",
            p50(&start_samples),
        ),
        ("the child, reaping, the exit report", rest),
    ] {
        steps.row(vec![name.into(), millis(part), share(part)]);
    }
    steps.print("Where an exec's time goes (the ping is part of the exec start)");

    concurrent(&client, 1000, 16).await?;

    // Stdout, put and get vs the same bytes on the host: the command's pipe read there, and a
    // copy of the same file.
    let bytes = megabytes * 1024 * 1024;
    let source = scratch.join("payload");
    write_source(&source, bytes).context("write the payload")?;
    let remote = scratch.join("remote-copy").display().to_string();
    let agent = transfers(&client, &source, &remote, bytes).await?;
    let producer = producer(bytes);
    let started = Instant::now();
    let mut child = Command::new(&producer[0])
        .args(&producer[1..])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut pipe = child.stdout.take().context("host pipe")?;
    let host_bytes = std::io::copy(&mut pipe, &mut std::io::sink())?;
    child.wait()?;
    let host_stdout = started.elapsed();
    let started = Instant::now();
    std::fs::copy(&source, scratch.join("host-copy"))?;
    let host_copy = started.elapsed();

    let mut throughput = Table::new(&["transfer", "agent", "host", "time ratio"]);
    throughput.row(vec![
        format!("stdout {megabytes} MiB"),
        rate(bytes, agent.stdout),
        rate(host_bytes, host_stdout),
        ratio(agent.stdout.as_secs_f64(), host_stdout.as_secs_f64()),
    ]);
    throughput.row(vec![
        format!("put {megabytes} MiB"),
        rate(bytes, agent.put),
        rate(bytes, host_copy),
        ratio(agent.put.as_secs_f64(), host_copy.as_secs_f64()),
    ]);
    throughput.row(vec![
        format!("get {megabytes} MiB"),
        rate(bytes, agent.get),
        rate(bytes, host_copy),
        ratio(agent.get.as_secs_f64(), host_copy.as_secs_f64()),
    ]);
    throughput.print("Throughput (agent over unix socket vs the same bytes on the host)");
    Ok(())
}

/// `total` execs of `true` from `clients` concurrent tasks on the one connection, next to the
/// same spawns from as many host threads: total time and p99.
async fn concurrent(client: &Client, total: usize, clients: usize) -> anyhow::Result<()> {
    // The first `total % clients` take one more, so exactly `total` run.
    let share_of = |i: usize| total / clients + usize::from(i < total % clients);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let each = share_of(i);
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            exec_round_trips(&client, each).await
        }));
    }
    let mut agent_samples = Vec::with_capacity(total);
    for task in tasks {
        agent_samples.extend(task.await.context("join an exec task")??);
    }
    let agent_total = started.elapsed();
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let each = share_of(i);
            std::thread::spawn(move || {
                let mut samples = Vec::with_capacity(each);
                for _ in 0..each {
                    let one = Instant::now();
                    let ok = Command::new("true").status().is_ok_and(|s| s.success());
                    samples.push(one.elapsed());
                    if !ok {
                        return Err(anyhow::anyhow!("`true` failed on the host"));
                    }
                }
                Ok(samples)
            })
        })
        .collect();
    let mut host_samples = Vec::with_capacity(total);
    for thread in threads {
        let samples = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a spawning thread panicked"))??;
        host_samples.extend(samples);
    }
    let host_total = started.elapsed();
    agent_samples.sort();
    host_samples.sort();
    let mut table = Table::new(&["clients", "total", "p99", "total ratio"]);
    table.row(vec![
        format!("agent, {clients} tasks on one connection"),
        millis(agent_total),
        millis(percentile(&agent_samples, 99.0)),
        ratio(agent_total.as_secs_f64(), host_total.as_secs_f64()),
    ]);
    table.row(vec![
        format!("host, {clients} threads"),
        millis(host_total),
        millis(percentile(&host_samples, 99.0)),
        "1.00x".into(),
    ]);
    table.print(&format!(
        "{total} execs of `true` at once from {clients} clients"
    ));
    Ok(())
}
