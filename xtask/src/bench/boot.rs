//! Boot → exec → exit: `krunbox run --backend qemu --accel tcg --timings=json -- true` on the
//! default image, timed from spawn to exit, for krunbox's own kernel (the QEMU backend's
//! default once installed) and Debian's cloud kernel (the fallback), side by side, with the
//! median of each step `--timings` reports (firmware and kernel load, kernel init, agent
//! start, first exec, the command, power-off) so the share of each is in one table.
//!
//! A third row is the same run from a warm pool (`krunbox pool start --size 1` with the same
//! settings, krunbox's own kernel): each run takes the pool's booted VM; between runs the
//! bench waits, untimed, for the keeper to boot the next.
//!
//! TCG, not KVM: it is what our CI machines (nested `kvm_pvm`) run, and it is deterministic
//! enough to compare kernels. The first run of each kernel is reported on its own: it imports
//! the default image into the (private, fresh) store and builds the initramfs, which later
//! runs find cached.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::private::{KernelSet, PrivateKrunbox};
use super::table::{millis, percentile, Table};

/// The steps of `krunbox run --timings=json`, as (JSON key, column).
const STEPS: &[(&str, &str)] = &[
    ("firmware_and_kernel_load_ms", "fw+load"),
    ("kernel_init_ms", "kernel"),
    ("agent_start_ms", "agent"),
    ("first_exec_ms", "exec"),
    ("command_ms", "command"),
    ("power_off_ms", "power-off"),
];

pub fn run(runs: usize) -> anyhow::Result<()> {
    let binary = PrivateKrunbox::build()?;
    let mut header = vec!["kernel", "first run", "median", "p90", "min"];
    header.extend(STEPS.iter().map(|(_, column)| *column));
    let mut table = Table::new(&header);
    for (name, kernels) in [
        ("krunbox's own (default)", KernelSet::User),
        ("Debian cloud kernel (fallback)", KernelSet::DebianOnly),
    ] {
        let krunbox = PrivateKrunbox::with_kernels(binary.clone(), kernels)?;
        if kernels == KernelSet::User && !krunbox.ok(&["doctor"])?.contains("krunbox's own") {
            table.row(vec![format!(
                "{name}: not installed (cargo xtask build-kernel; krunbox kernel install)"
            )]);
            continue;
        }
        table.row(measure(name, runs, || boot(&krunbox))?);
        if kernels == KernelSet::User {
            krunbox.ok(&[
                "pool",
                "start",
                "--size",
                "1",
                "--backend",
                "qemu",
                "--accel",
                "tcg",
            ])?;
            let warm = measure("the same, warm pool of 1 (own kernel)", runs, || {
                wait_until_ready(&krunbox)?;
                let (total, timings) = boot(&krunbox)?;
                if timings
                    .get("warm_pool")
                    .and_then(serde_json::Value::as_str)
                    .is_none()
                {
                    bail!("a run did not take the pool's VM: {timings}");
                }
                Ok((total, timings))
            });
            krunbox.ok(&["pool", "stop", "default"])?;
            table.row(warm?);
        }
    }
    table.print(&format!(
        "krunbox run --backend qemu --accel tcg -- true: boot -> exec -> exit, {runs} runs after the first (steps: medians of --timings)"
    ));
    Ok(())
}

/// The row of `name`: the first of `runs + 1` runs on its own, then the totals' median, p90
/// and minimum and each step's median.
fn measure(
    name: &str,
    runs: usize,
    mut once: impl FnMut() -> anyhow::Result<(Duration, serde_json::Value)>,
) -> anyhow::Result<Vec<String>> {
    let (first, _) = once()?;
    let mut totals = Vec::with_capacity(runs);
    let mut steps: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); STEPS.len()];
    for _ in 0..runs {
        let (total, timings) = once()?;
        totals.push(total);
        for (samples, (key, _)) in steps.iter_mut().zip(STEPS) {
            let value = timings.get(*key).and_then(serde_json::Value::as_u64);
            samples.push(Duration::from_millis(value.unwrap_or_default()));
        }
    }
    totals.sort();
    let mut row = vec![
        name.to_owned(),
        millis(first),
        millis(percentile(&totals, 50.0)),
        millis(percentile(&totals, 90.0)),
        millis(totals.first().copied().unwrap_or_default()),
    ];
    for samples in &mut steps {
        samples.sort();
        row.push(format!("{} ms", percentile(samples, 50.0).as_millis()));
    }
    Ok(row)
}

/// Waits until the default pool has a booted VM ready.
fn wait_until_ready(krunbox: &PrivateKrunbox) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let listed: serde_json::Value =
            serde_json::from_str(&krunbox.ok(&["pool", "ls", "--format", "json"])?)?;
        if listed[0]["ready"].as_u64() == Some(1) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pool never had a VM ready: {listed}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `krunbox run --timings=json -- true`: spawn to exit, and what `--timings` said.
fn boot(krunbox: &PrivateKrunbox) -> anyhow::Result<(Duration, serde_json::Value)> {
    let mut cmd = krunbox.command([
        "run",
        "--backend",
        "qemu",
        "--accel",
        "tcg",
        "--timings=json",
        "--",
        "true",
    ]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let output = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "krunbox run -- true failed with {}: {}",
            output.status,
            stderr.trim()
        );
    }
    let timings = stderr
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .context("krunbox run --timings=json printed no timings")?;
    Ok((elapsed, timings))
}
