//! Boot → exec → exit: `krunbox run --backend qemu --accel tcg --timings=json -- true` on the
//! default image, timed from spawn to exit, for krunbox's own kernel (the QEMU backend's
//! default once installed) and Debian's cloud kernel (the fallback), side by side, with the
//! median of each step `--timings` reports (firmware and kernel load, kernel init, agent
//! start, first exec, the command, power-off) so the share of each is in one table.
//!
//! Under the first row is its floor: raw QEMU booting the same kernel to a `poweroff -f`
//! init (`floor.rs`); the medians are printed as ratios to it.
//!
//! A further row is the same run from a warm pool (`krunbox pool start --size 1` with the same
//! settings, krunbox's own kernel): each run takes the pool's booted VM; between runs the
//! bench waits, untimed, for the keeper to boot the next. Then a paused named sandbox:
//! `krunbox resume` and `krunbox exec NAME -- true`, paused again untimed between runs. The
//! last row is gVisor running `true` in the same image under podman (`gvisor.rs`).
//!
//! TCG, not KVM: it is what our CI machines (nested `kvm_pvm`) run, and it is deterministic
//! enough to compare kernels. The first run of each kernel is reported on its own: it imports
//! the default image into the (private, fresh) store and builds the initramfs, which later
//! runs find cached.

use std::process::Stdio;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use anyhow::{bail, Context};

use super::floor::Floor;
use super::gvisor::Gvisor;
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
    let mut report = Report {
        table: Table::new(&header),
        medians: Vec::new(),
    };
    for (name, kernels) in [
        ("krunbox's own (default)", KernelSet::User),
        ("Debian cloud kernel (fallback)", KernelSet::DebianOnly),
    ] {
        let krunbox = PrivateKrunbox::with_kernels(binary.clone(), kernels)?;
        if kernels == KernelSet::User && !krunbox.ok(&["doctor"])?.contains("krunbox's own") {
            report.missing(
                name,
                "not installed (cargo xtask build-kernel; krunbox kernel install)",
            );
            continue;
        }
        report.add(name, measure(name, runs, || boot(&krunbox))?);
        if kernels == KernelSet::User {
            match own_kernel(&krunbox) {
                Some(kernel) => {
                    let floor = Floor::new(&kernel)?;
                    report.add(FLOOR, measure_totals(FLOOR, runs, || floor.boot())?);
                }
                None => report.missing(FLOOR, "no vmlinux found"),
            }
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
            let warm = measure(WARM_POOL, runs, || {
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
            report.add(WARM_POOL, warm?);
            report.add(
                RESUME,
                measure_totals(RESUME, runs, || resume_and_exec(&krunbox))?,
            );
            krunbox.ok(&["rm", "-f", PAUSED])?;
        }
    }
    match Gvisor::new()? {
        Some(gvisor) => report.add(GVISOR, measure_totals(GVISOR, runs, || gvisor.run_true())?),
        None => report.missing(GVISOR, "not installed (Debian's runsc)"),
    }
    report.print(runs);
    Ok(())
}

const GVISOR: &str = "gVisor: podman --runtime runsc run --rm IMAGE true";
const FLOOR: &str = "raw QEMU floor (own vmlinux, init = poweroff -f)";
const WARM_POOL: &str = "the same, warm pool of 1 (own kernel)";
const RESUME: &str = "a paused sandbox: resume + exec true (own kernel)";
/// The sandbox the resume row pauses and resumes.
const PAUSED: &str = "bench-paused";

/// One `krunbox resume` of a paused sandbox and `krunbox exec NAME -- true` in it, timed;
/// then, untimed, it is paused again. The first call creates, starts and pauses it.
fn resume_and_exec(krunbox: &PrivateKrunbox) -> anyhow::Result<Duration> {
    let listed = krunbox.ok(&["ps", "-a", "-q"])?;
    if !listed.lines().any(|name| name == PAUSED) {
        krunbox.ok(&[
            "create",
            "--name",
            PAUSED,
            "--backend",
            "qemu",
            "--accel",
            "tcg",
        ])?;
        krunbox.ok(&["start", PAUSED])?;
        krunbox.ok(&["pause", PAUSED])?;
    }
    let started = Instant::now();
    krunbox.ok(&["resume", PAUSED])?;
    krunbox.ok(&["exec", PAUSED, "--", "true"])?;
    let elapsed = started.elapsed();
    krunbox.ok(&["pause", PAUSED])?;
    Ok(elapsed)
}

/// The table and each row's median, for the ratios to the floor.
struct Report {
    table: Table,
    medians: Vec<(&'static str, Duration)>,
}

impl Report {
    fn add(&mut self, name: &'static str, row: Row) {
        self.medians.push((name, row.median));
        self.table.row(row.cells);
    }

    /// A row that could not be measured, and why.
    fn missing(&mut self, name: &str, why: &str) {
        self.table.row(vec![format!("{name}: {why}")]);
    }

    fn print(&self, runs: usize) {
        self.table.print(&format!(
            "krunbox run --backend qemu --accel tcg -- true: boot -> exec -> exit, {runs} runs after the first (steps: medians of --timings)"
        ));
        let Some((_, floor)) = self.medians.iter().find(|(name, _)| *name == FLOOR) else {
            return;
        };
        let ratios: Vec<String> = self
            .medians
            .iter()
            .filter(|(name, _)| *name != FLOOR)
            .map(|(name, median)| {
                format!("{name} {:.2}x", median.as_secs_f64() / floor.as_secs_f64())
            })
            .collect();
        println!("  medians over the raw-QEMU floor: {}", ratios.join(", "));
    }
}

/// krunbox's own kernel as the private krunbox boots it: the newest installed release's
/// `vmlinux` in its data directory's kernels.
fn own_kernel(krunbox: &PrivateKrunbox) -> Option<PathBuf> {
    let kernels = krunbox.data_dir().join("kernels/krunbox");
    let entries = std::fs::read_dir(kernels).ok()?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("vmlinux"))
        .filter(|vmlinux| vmlinux.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// A row: its cells and the median of its totals.
struct Row {
    cells: Vec<String>,
    median: Duration,
}

/// The row of `name`: the first of `runs + 1` runs on its own, then the totals' median, p90
/// and minimum and each step's median.
fn measure(
    name: &str,
    runs: usize,
    mut once: impl FnMut() -> anyhow::Result<(Duration, serde_json::Value)>,
) -> anyhow::Result<Row> {
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
    let mut row = totals_row(name, first, totals);
    for samples in &mut steps {
        samples.sort();
        row.cells
            .push(format!("{} ms", percentile(samples, 50.0).as_millis()));
    }
    Ok(row)
}

/// [`measure`] for a run that reports no steps.
fn measure_totals(
    name: &str,
    runs: usize,
    mut once: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Row> {
    let first = once()?;
    let totals = (0..runs).map(|_| once()).collect::<anyhow::Result<_>>()?;
    Ok(totals_row(name, first, totals))
}

/// The first run, then the median, p90 and minimum of the others.
fn totals_row(name: &str, first: Duration, mut totals: Vec<Duration>) -> Row {
    totals.sort();
    let median = percentile(&totals, 50.0);
    let cells = vec![
        name.to_owned(),
        millis(first),
        millis(median),
        millis(percentile(&totals, 90.0)),
        millis(totals.first().copied().unwrap_or_default()),
    ];
    Row { cells, median }
}

/// Waits until the default pool has a booted VM ready.
pub(super) fn wait_until_ready(krunbox: &PrivateKrunbox) -> anyhow::Result<()> {
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
