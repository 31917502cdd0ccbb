//! A KVM host whose CPU stopped for good. Now and then, QEMU's TCG leaves the emulated KVM
//! host halted with nothing to wake it: its vCPU thread waits on a futex, uses no CPU time,
//! and the command inside never ends (CI of stop 23: 1800 s on one test, no message on the
//! console). A guest that is merely idle still takes timer interrupts, so its vCPU time keeps
//! growing. When QEMU's CPU time has not moved for [`STILL_FOR`] the harness injects an NMI
//! through QEMU's monitor, which wakes a halted CPU; Linux logs an NMI "for unknown reason"
//! and carries on.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long QEMU's CPU time may stand still before the KVM host counts as frozen.
const STILL_FOR: Duration = Duration::from_secs(20);

/// Watches one QEMU process.
pub struct FrozenWatch {
    pid: u32,
    monitor: PathBuf,
    last_cpu: u64,
    since: Instant,
}

impl FrozenWatch {
    /// Watches QEMU `pid`, whose human monitor listens on `monitor`.
    pub fn new(pid: u32, monitor: &Path) -> Self {
        Self {
            pid,
            monitor: monitor.to_owned(),
            last_cpu: cpu_ticks(pid).unwrap_or(0),
            since: Instant::now(),
        }
    }

    /// Called in the harness's loop: sends an NMI if QEMU has used no CPU for [`STILL_FOR`].
    pub fn check(&mut self) {
        let Some(cpu) = cpu_ticks(self.pid) else {
            return;
        };
        if cpu != self.last_cpu {
            self.last_cpu = cpu;
            self.since = Instant::now();
            return;
        }
        if self.since.elapsed() < STILL_FOR {
            return;
        }
        self.since = Instant::now();
        match UnixStream::connect(&self.monitor).and_then(|mut m| m.write_all(b"nmi\n")) {
            Ok(()) => eprintln!(
                "kvm-host: the KVM host's CPU used no time for {STILL_FOR:?} (halted for good?); sent it an NMI"
            ),
            Err(err) => eprintln!("kvm-host: the KVM host's CPU is still; cannot reach QEMU's monitor: {err}"),
        }
    }
}

/// User and system CPU time of every thread of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
