//! Named sandboxes: how many start per minute, and what an idle one costs the host.
//!
//! K sandboxes are created (untimed: the first imports the default image), then started in
//! parallel, each `krunbox start NAME` followed by `krunbox exec NAME -- true`; the wall time
//! until the last answers gives sandboxes per minute. After they sit idle for a few seconds,
//! `krunbox stats --json` sums RSS and PSS over every host process of each sandbox (monitor,
//! supervisor, QEMU, virtiofsd, vhost-device-vsock): the mean per idle sandbox. RSS counts
//! guest RAM once per process that maps it; PSS splits shared pages and is what the host
//! really spends.
//!
//! Everything runs against a private data and runtime directory ([`PrivateKrunbox`]), and
//! every sandbox is removed on the way out, error or not.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::private::PrivateKrunbox;
use super::table::{millis, percentile, Table};

/// How long the sandboxes sit idle before their memory is read.
const IDLE: Duration = Duration::from_secs(5);

pub fn run(count: usize) -> anyhow::Result<()> {
    let krunbox = PrivateKrunbox::new()?;
    let mut sandboxes = Sandboxes {
        krunbox: &krunbox,
        names: Vec::new(),
    };
    for i in 0..count {
        let name = format!("bench-{i}");
        // Listed first: a create that fails halfway is removed too.
        sandboxes.names.push(name.clone());
        sandboxes.krunbox.ok(&[
            "create",
            "--name",
            &name,
            "--backend",
            "qemu",
            "--accel",
            "tcg",
            "--boot-timeout",
            "600",
        ])?;
    }

    let started = Instant::now();
    let answered: Vec<anyhow::Result<Duration>> = std::thread::scope(|scope| {
        let sandboxes = &sandboxes;
        let handles: Vec<_> = sandboxes
            .names
            .iter()
            .map(|name| {
                scope.spawn(move || {
                    sandboxes.krunbox.ok(&["start", name])?;
                    sandboxes.krunbox.ok(&["exec", name, "--", "true"])?;
                    Ok(started.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a start thread panicked")))
            })
            .collect()
    });
    let wall = started.elapsed();
    let mut answered = answered.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    answered.sort();

    std::thread::sleep(IDLE);
    let memory = sandboxes.idle_memory()?;

    let mut table = Table::new(&["sandboxes", "value"]);
    table.row(vec![
        format!("{count} started in parallel, all answering `exec true`"),
        millis(wall),
    ]);
    table.row(vec![
        "sandboxes started per minute".into(),
        format!("{:.1}", count as f64 * 60.0 / wall.as_secs_f64().max(1e-9)),
    ]);
    table.row(vec![
        "start + exec of one (median of the parallel ones)".into(),
        millis(percentile(&answered, 50.0)),
    ]);
    table.row(vec![
        format!(
            "host RSS per idle sandbox (mean, summed over {:.0} processes)",
            memory.processes
        ),
        mib(memory.rss),
    ]);
    table.row(vec![
        "host PSS per idle sandbox (mean)".into(),
        mib(memory.pss),
    ]);
    table.print(&format!(
        "Named sandboxes under QEMU TCG ({count} at once, default image, 512 MiB guests, idle {}s before stats)",
        IDLE.as_secs()
    ));
    let mut table = Table::new(&["process", "count", "RSS", "PSS"]);
    for (name, (processes, rss, pss)) in &memory.by_process {
        table.row(vec![
            name.clone(),
            format!("{processes:.0}"),
            mib(*rss),
            mib(*pss),
        ]);
    }
    table.print("Host memory of one idle sandbox by process (mean over the sandboxes)");
    Ok(())
}

/// The sandboxes created so far; removed (stopped hard first) on drop.
struct Sandboxes<'a> {
    krunbox: &'a PrivateKrunbox,
    names: Vec<String>,
}

impl Sandboxes<'_> {
    /// Per-sandbox means of summed RSS and PSS, overall and by process name, from
    /// `krunbox stats --json`.
    fn idle_memory(&self) -> anyhow::Result<IdleMemory> {
        let mut args = vec!["stats", "--json", "--interval", "200"];
        args.extend(self.names.iter().map(String::as_str));
        let text = self.krunbox.ok(&args)?;
        let stats: Vec<serde_json::Value> =
            serde_json::from_str(&text).context("parse krunbox stats --json")?;
        if stats.len() != self.names.len() {
            bail!(
                "krunbox stats reported {} of {} sandboxes",
                stats.len(),
                self.names.len()
            );
        }
        let mut total = IdleMemory::default();
        for sandbox in &stats {
            let processes = sandbox["processes"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            if processes.is_empty() {
                bail!("krunbox stats found no processes for {}", sandbox["name"]);
            }
            for process in processes {
                let name = process["name"].as_str().unwrap_or("?").to_owned();
                let bytes = |key: &str| {
                    process[key]
                        .as_u64()
                        .with_context(|| format!("no {key} of a process in krunbox stats --json"))
                };
                let (rss, pss) = (bytes("rss_bytes")? as f64, bytes("pss_bytes")? as f64);
                let entry = total.by_process.entry(name).or_default();
                entry.0 += 1.0;
                entry.1 += rss;
                entry.2 += pss;
                total.rss += rss;
                total.pss += pss;
                total.processes += 1.0;
            }
        }
        let n = stats.len() as f64;
        total.rss /= n;
        total.pss /= n;
        total.processes /= n;
        for entry in total.by_process.values_mut() {
            entry.0 /= n;
            entry.1 /= n;
            entry.2 /= n;
        }
        Ok(total)
    }
}

/// Host memory of one idle sandbox, averaged over the sandboxes (bytes).
#[derive(Default)]
struct IdleMemory {
    rss: f64,
    pss: f64,
    processes: f64,
    /// Process name → (processes, RSS, PSS).
    by_process: std::collections::BTreeMap<String, (f64, f64, f64)>,
}

impl Drop for Sandboxes<'_> {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let removed = self
            .krunbox
            .command(["rm", "-f"])
            .args(&self.names)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if !removed.is_ok_and(|s| s.success()) {
            eprintln!(
                "bench: removing the sandboxes failed; look for processes naming {}",
                self.krunbox.runtime_dir().display()
            );
        }
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}
