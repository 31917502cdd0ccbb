//! libkrun against the QEMU backend with KVM, side by side in the same KVM host (`cargo xtask
//! kvm-host`): boot → exec → exit, the same from a warm pool of one, the exec round trip into a
//! running sandbox, and the host memory of an idle sandbox. Both boot krunbox's own kernel (`cargo xtask build-kernel`:
//! the `vmlinux`, libkrun's format 1 and QEMU's PVH entry) on the default image, so the
//! backends differ and nothing else; libkrun with its default libkrunfw kernel is a third row.
//!
//! The KVM host is itself emulated (TCG), so absolute times say little: the ratios between
//! rows, measured in one run, are what this machine can tell. Outside a KVM host the suite
//! builds what it needs, then runs itself inside one.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::private::{built_kernel, PrivateKrunbox};
use super::table::{millis, percentile, ratio, Table};
use crate::workspace;

/// Set inside the KVM host (krunbox's `KRUNBOX_*` variables are forwarded into it).
const INSIDE: &str = "KRUNBOX_BENCH_IN_KVM_HOST";

/// One way of running a VM.
struct Setup {
    name: &'static str,
    args: Vec<String>,
}

pub fn run(runs: usize) -> anyhow::Result<()> {
    if !in_kvm_host() {
        PrivateKrunbox::build()?;
        built_kernel().context("krunbox's kernel is not built: cargo xtask build-kernel")?;
        return run_in_kvm_host(
            "backends",
            &["--iterations".into(), (runs * 60).to_string()],
            &[],
        );
    }
    let binary = workspace::target_dir().join("release/krunbox");
    let krunbox = PrivateKrunbox::with_binary(binary)?;
    let kernel =
        built_kernel().context("krunbox's kernel is not built: cargo xtask build-kernel")?;
    let kernel = kernel.to_string_lossy().into_owned();
    let setups = [
        Setup {
            name: "QEMU + KVM, krunbox's kernel",
            args: vec![
                "--backend".into(),
                "qemu".into(),
                "--accel".into(),
                "kvm".into(),
                "--kernel".into(),
                kernel.clone(),
            ],
        },
        Setup {
            name: "libkrun, krunbox's kernel",
            args: vec!["--backend".into(), "krun".into(), "--kernel".into(), kernel],
        },
        Setup {
            name: "libkrun, libkrunfw's kernel",
            args: vec!["--backend".into(), "krun".into()],
        },
    ];
    let mut rows = Vec::new();
    for setup in &setups {
        rows.push(measure(&krunbox, setup, runs)?);
    }
    let base = &rows[0];
    let mut table = Table::new(&[
        "backend",
        "boot->exec->exit (median)",
        "ratio",
        "warm pool run (median)",
        "ratio",
        "exec round trip (median)",
        "ratio",
        "host PSS, idle sandbox",
        "ratio",
    ]);
    for row in &rows {
        table.row(vec![
            row.name.into(),
            millis(row.boot),
            ratio(row.boot.as_secs_f64(), base.boot.as_secs_f64()),
            millis(row.warm),
            ratio(row.warm.as_secs_f64(), base.warm.as_secs_f64()),
            millis(row.exec),
            ratio(row.exec.as_secs_f64(), base.exec.as_secs_f64()),
            format!("{:.1} MiB", row.pss as f64 / (1 << 20) as f64),
            ratio(row.pss as f64, base.pss as f64),
        ]);
    }
    table.print(&format!(
        "Backends in one KVM host (emulated: compare the ratios), {runs} runs each; \
         `krunbox run -- true` cold and from `krunbox pool start --size 1` with the same \
         settings, `krunbox exec NAME -- true`, `krunbox stats` PSS summed over the sandbox's \
         processes; ratios against the first row"
    ));
    Ok(())
}

/// Whether this run is the one inside the KVM host.
pub fn in_kvm_host() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// Runs `cargo xtask bench --suite SUITE ARGS` (this very binary) in a KVM host, marked as
/// inside, with `env` (`NAME=VALUE`) too; what it needs must be built first (the KVM host
/// cannot build).
pub fn run_in_kvm_host(suite: &str, args: &[String], env: &[String]) -> anyhow::Result<()> {
    let xtask = std::env::current_exe().context("find the xtask binary")?;
    let mut cmd = Command::new(&xtask);
    cmd.args(["kvm-host", "--env"]).arg(format!("{INSIDE}=1"));
    for variable in env {
        cmd.arg("--env").arg(variable);
    }
    let status = cmd
        .arg("--")
        .arg(&xtask)
        .args(["bench", "--suite", suite])
        .args(args)
        .status()
        .context("run the KVM host")?;
    if !status.success() {
        bail!("the {suite} suite in the KVM host failed with {status}");
    }
    Ok(())
}

struct Row {
    name: &'static str,
    boot: Duration,
    warm: Duration,
    exec: Duration,
    pss: u64,
}

fn measure(krunbox: &PrivateKrunbox, setup: &Setup, runs: usize) -> anyhow::Result<Row> {
    let mut boots = Vec::with_capacity(runs);
    // One untimed run first: the store import and any first-use cache.
    for i in 0..=runs {
        let mut args: Vec<&str> = vec!["run"];
        args.extend(setup.args.iter().map(String::as_str));
        args.extend(["--", "true"]);
        let started = Instant::now();
        krunbox.ok(&args)?;
        if i > 0 {
            boots.push(started.elapsed());
        }
    }
    boots.sort();
    let warm = warm_runs(krunbox, setup, runs);
    let _ = krunbox.ok(&["pool", "stop", "default"]);
    let warm = warm?;
    let name = format!("bench-{}", std::process::id());
    let mut create: Vec<&str> = vec!["create", "--name", &name];
    create.extend(setup.args.iter().map(String::as_str));
    krunbox.ok(&create)?;
    let result = in_sandbox(krunbox, &name, runs);
    let _ = krunbox.ok(&["rm", "-f", &name]);
    let (exec, pss) = result?;
    Ok(Row {
        name: setup.name,
        boot: percentile(&boots, 50.0),
        warm: percentile(&warm, 50.0),
        exec,
        pss,
    })
}

/// `runs` timed runs of `krunbox run -- true` that each take the warm VM of a pool of one with
/// `setup`'s settings (the keeper boots the next between runs, untimed).
fn warm_runs(
    krunbox: &PrivateKrunbox,
    setup: &Setup,
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut start: Vec<&str> = vec!["pool", "start", "--size", "1"];
    start.extend(setup.args.iter().map(String::as_str));
    krunbox.ok(&start)?;
    let mut warm = Vec::with_capacity(runs);
    for _ in 0..runs {
        super::boot::wait_until_ready(krunbox)?;
        let mut args: Vec<&str> = vec!["run", "--timings=json"];
        args.extend(setup.args.iter().map(String::as_str));
        args.extend(["--", "true"]);
        let started = Instant::now();
        let out = krunbox
            .command(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .context("run krunbox run from the pool")?;
        let elapsed = started.elapsed();
        if !out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("\"warm_pool\":\"")
        {
            bail!(
                "a run did not take the pool's VM: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        warm.push(elapsed);
    }
    warm.sort();
    Ok(warm)
}

/// The median exec round trip into the running sandbox `name`, and its host PSS once idle.
fn in_sandbox(
    krunbox: &PrivateKrunbox,
    name: &str,
    runs: usize,
) -> anyhow::Result<(Duration, u64)> {
    krunbox.ok(&["start", name])?;
    let mut execs = Vec::with_capacity(runs * 4);
    for _ in 0..runs * 4 {
        let started = Instant::now();
        krunbox.ok(&["exec", name, "--", "true"])?;
        execs.push(started.elapsed());
    }
    execs.sort();
    std::thread::sleep(Duration::from_secs(5));
    let stats = krunbox.ok(&["stats", "--json", "--interval", "200", name])?;
    let stats: Vec<serde_json::Value> =
        serde_json::from_str(&stats).context("parse krunbox stats --json")?;
    let pss = stats
        .first()
        .and_then(|s| s["processes"].as_array())
        .map(|processes| {
            processes
                .iter()
                .filter_map(|p| p["pss_bytes"].as_u64())
                .sum::<u64>()
        })
        .context("no processes in krunbox stats --json")?;
    Ok((percentile(&execs, 50.0), pss))
}
