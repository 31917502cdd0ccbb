//! What a sandbox costs the host, read from `/proc`: the processes under its monitor (the
//! monitor, the backend's supervisor, QEMU or the libkrun VMM, virtiofsd, vhost-device-vsock),
//! their CPU time and memory.
//!
//! Memory is reported two ways: RSS summed over the processes, and PSS (proportional set
//! size, `/proc/PID/smaps_rollup`). Guest RAM is shared memory that QEMU and every
//! vhost-user helper map, so summed RSS counts the pages each of them touched once per
//! process; PSS splits shared pages between their mappers and sums to what the host really
//! spends.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

/// One process's numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessStats {
    /// Its pid.
    pub pid: u32,
    /// Its command name (`comm`).
    pub name: String,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Proportional set size, bytes (0 when unreadable).
    pub pss_bytes: u64,
}

/// A process tree's numbers at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TreeStats {
    /// Every process of the tree, root first.
    pub processes: Vec<ProcessStats>,
}

impl TreeStats {
    /// Summed RSS.
    pub fn rss_bytes(&self) -> u64 {
        self.processes.iter().map(|p| p.rss_bytes).sum()
    }

    /// Summed PSS.
    pub fn pss_bytes(&self) -> u64 {
        self.processes.iter().map(|p| p.pss_bytes).sum()
    }

    /// Summed CPU ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.processes.iter().map(|p| p.cpu_ticks).sum()
    }
}

/// `(ppid, comm, utime + stime)` from a `/proc/PID/stat` line. `comm` may hold spaces and
/// parentheses, so the fields are counted from the last `)`.
fn parse_stat(line: &str) -> Option<(u32, String, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let name = line.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, name, utime + stime))
}

/// A `kB` field (`VmRSS:`, `Pss:`) of a `/proc` status-like file, in bytes (`None` where a
/// guest's `/proc/meminfo` gives a value that does not fit).
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .and_then(|kb| kb.checked_mul(1024))
}

/// The tree rooted at `root` (the root included), from `proc` (normally `/proc`).
pub fn tree(proc: &Path, root: u32) -> TreeStats {
    let mut all: HashMap<u32, (u32, String, u64)> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir(proc) {
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|line| parse_stat(&line))
            {
                all.insert(pid, stat);
            }
        }
    }
    if !all.contains_key(&root) {
        return TreeStats::default();
    }
    let mut order = vec![root];
    let mut index = 0;
    while index < order.len() {
        let parent = order[index];
        let mut children: Vec<u32> = all
            .iter()
            .filter(|(_, (ppid, _, _))| *ppid == parent)
            .map(|(pid, _)| *pid)
            .collect();
        children.sort_unstable();
        order.extend(children);
        index += 1;
    }
    let processes = order
        .into_iter()
        .filter_map(|pid| {
            let (_, name, cpu_ticks) = all.get(&pid)?.clone();
            let dir = proc.join(pid.to_string());
            let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
            let rollup = std::fs::read_to_string(dir.join("smaps_rollup")).unwrap_or_default();
            Some(ProcessStats {
                pid,
                name,
                cpu_ticks,
                rss_bytes: kb_field(&status, "VmRSS:").unwrap_or(0),
                pss_bytes: kb_field(&rollup, "Pss:").unwrap_or(0),
            })
        })
        .collect();
    TreeStats { processes }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// `MemTotal` and `MemAvailable` of a guest's `/proc/meminfo`, bytes.
pub fn guest_memory(meminfo: &str) -> Option<(u64, u64)> {
    Some((
        kb_field(meminfo, "MemTotal:")?,
        kb_field(meminfo, "MemAvailable:")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line =
            "4242 (qemu (x) y) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(line), Some((17, "qemu (x) y".into(), 281)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_tree_of_this_process_includes_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let stats = tree(Path::new("/proc"), std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(stats.processes[0].pid, std::process::id());
        assert!(stats
            .processes
            .iter()
            .any(|p| p.pid == child.id() && p.name == "sleep"));
        assert!(stats.rss_bytes() > 0);
        assert!(stats.pss_bytes() > 0);
        assert!(tree(Path::new("/proc"), u32::MAX).processes.is_empty());
    }

    #[test]
    fn guest_meminfo() {
        let text = "MemTotal:         496012 kB\nMemFree:  1 kB\nMemAvailable:     400000 kB\n";
        assert_eq!(guest_memory(text), Some((496012 * 1024, 400000 * 1024)));
        let hostile = format!("MemTotal: {} kB\nMemAvailable: 1 kB\n", u64::MAX);
        assert_eq!(
            guest_memory(&hostile),
            None,
            "an overflowing value is refused"
        );
    }
}
