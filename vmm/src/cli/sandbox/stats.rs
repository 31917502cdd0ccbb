//! `krunbox stats`: what running sandboxes cost the host.

use std::time::Duration;

use crate::cli::session;
use crate::sandbox::stats;
use krunbox_protocol::client::Client;

use super::SandboxCliError;
use crate::backend::VmHandle;
use crate::cli::table::print_table;
use crate::sandbox::attach::AttachedVm;
use crate::sandbox::store::{Sandbox, Store};
use crate::sandbox::SandboxError;

/// Show what running sandboxes cost: CPU, host memory (PSS and RSS of the VM's host
/// processes) and the guest's own view of its memory.
///
/// Host memory: guest RAM is shared between QEMU and its vhost-user helpers, so RSS summed
/// over them counts shared pages once per process; PSS splits them and is what the host
/// spends. CPU is measured over --interval.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print JSON (one object per sandbox, with every process) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Milliseconds over which CPU use is measured.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval: u64,
    /// The sandboxes (default: every running one).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

/// `krunbox stats`.
pub fn stats(args: StatsArgs) -> Result<i32, SandboxCliError> {
    let store = Store::new()?;
    let sandboxes: Vec<Sandbox> = if args.names.is_empty() {
        store
            .list()?
            .into_iter()
            .filter(|s| s.monitor_alive().unwrap_or(false))
            .collect()
    } else {
        args.names
            .iter()
            .map(|n| store.open(n))
            .collect::<Result<_, _>>()?
    };
    let measured = measure(sandboxes, Duration::from_millis(args.interval))?;
    if args.json {
        let text = serde_json::to_string_pretty(&measured).map_err(SandboxError::Json)?;
        println!("{text}");
        return Ok(0);
    }
    let mut table = vec![[
        "NAME",
        "CPU %",
        "HOST MEM (PSS)",
        "RSS SUM",
        "PROCS",
        "GUEST MEM USED",
    ]
    .map(String::from)
    .to_vec()];
    for one in &measured {
        table.push(vec![
            one.name.clone(),
            format!("{:.1}", one.cpu_percent),
            mib(one.host_pss_bytes),
            mib(one.host_rss_bytes),
            one.processes.len().to_string(),
            match (one.guest_total_bytes, one.guest_available_bytes) {
                (Some(total), Some(available)) => {
                    format!("{} / {}", mib(total.saturating_sub(available)), mib(total))
                }
                _ => "-".into(),
            },
        ]);
    }
    print_table(&mut std::io::stdout().lock(), &table);
    Ok(0)
}

/// What one running sandbox costs (`krunbox stats --json`, `krunbox serve`'s stats).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SandboxStats {
    /// The sandbox.
    pub name: String,
    /// CPU use of its host processes over the interval (100 = one core).
    pub cpu_percent: f64,
    /// Host memory, shared pages split between the processes sharing them.
    pub host_pss_bytes: u64,
    /// Host memory, shared pages counted once per process.
    pub host_rss_bytes: u64,
    /// The guest's memory (its /proc/meminfo), when its agent answered.
    pub guest_total_bytes: Option<u64>,
    /// What the guest can still use.
    pub guest_available_bytes: Option<u64>,
    /// Every host process of the VM.
    pub processes: Vec<stats::ProcessStats>,
}

/// Measures running `sandboxes` over `interval` (at least 1 ms).
pub fn measure(
    sandboxes: Vec<Sandbox>,
    interval: Duration,
) -> Result<Vec<SandboxStats>, SandboxCliError> {
    let proc = std::path::Path::new("/proc");
    let mut rows = Vec::new();
    for sandbox in sandboxes {
        let vm = AttachedVm::new(sandbox.clone())?;
        let pid = sandbox.state()?.map(|s| s.monitor_pid).unwrap_or_default();
        rows.push((sandbox, vm, pid, stats::tree(proc, pid)));
    }
    let interval = interval.max(Duration::from_millis(1));
    std::thread::sleep(interval);
    let ticks = stats::ticks_per_second() as f64;
    let mut measured = Vec::new();
    for (sandbox, vm, pid, before) in rows {
        let after = stats::tree(proc, pid);
        let cpu = after.cpu_ticks().saturating_sub(before.cpu_ticks()) as f64
            / ticks
            / interval.as_secs_f64()
            * 100.0;
        let meminfo = guest_file(&vm.agent_address(), "/proc/meminfo");
        let guest = meminfo.as_deref().and_then(stats::guest_memory);
        measured.push(SandboxStats {
            name: sandbox.name().to_owned(),
            cpu_percent: cpu,
            host_pss_bytes: after.pss_bytes(),
            host_rss_bytes: after.rss_bytes(),
            guest_total_bytes: guest.map(|g| g.0),
            guest_available_bytes: guest.map(|g| g.1),
            processes: after.processes,
        });
    }
    Ok(measured)
}

/// The most of a guest file `stats` reads.
const GUEST_FILE_LIMIT: usize = 64 * 1024;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A small guest file (e.g. /proc/meminfo) through the agent; `None` if unreachable.
fn guest_file(address: &krunbox_protocol::transport::AgentAddress, path: &str) -> Option<String> {
    session::block_on(async {
        let read = async {
            let client = Client::connect(address).await.ok()?;
            // A guest can put anything at the path: take no more than a meminfo.
            let mut content = crate::bounded::BoundedSink::new(GUEST_FILE_LIMIT);
            client.get(path, &mut content).await.ok()?;
            String::from_utf8(content.into_bytes()).ok()
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .ok()
            .flatten()
    })
    .ok()
    .flatten()
}
