//! Named sandboxes end to end (`krunbox create/start/exec/cp/stop/rm/ps/logs/stats/inspect`):
//! real guests under the QEMU backend (TCG here), driven through the real `krunbox` binary,
//! each test with its own data and runtime directories. See the crate docs for prerequisites.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use krunbox_tests::{e2e, private_data_dir, processes_mentioning, Harness};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long everything of a removed sandbox may take to disappear.
const CLEANUP: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// krunbox with this test's own sandboxes (data dir) and VMs (runtime dir).
struct Boxes {
    k: Harness,
    data: tempfile::TempDir,
}

impl Boxes {
    fn new(test: &str) -> Option<Self> {
        let k = e2e(test)?;
        Some(Self {
            k,
            data: private_data_dir(),
        })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.k.krunbox(args);
        cmd.env("KRUNBOX_DATA_DIR", self.data.path());
        cmd
    }

    fn out(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run krunbox")
    }

    /// Runs krunbox with `stdin`; returns its output.
    fn out_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn krunbox");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut input, &data);
        });
        let out = child.wait_with_output().expect("wait for krunbox");
        let _ = writer.join();
        out
    }

    /// Runs krunbox, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert!(
            out.status.success(),
            "krunbox {args:?} failed ({}): {}{}",
            out.status,
            text(&out.stderr),
            self.console_hint(args)
        );
        text(&out.stdout)
    }

    /// The monitor logs of every sandbox, for failure messages.
    fn console_hint(&self, _args: &[&str]) -> String {
        let mut hint = String::new();
        if let Ok(entries) = std::fs::read_dir(self.data.path().join("sandboxes")) {
            for entry in entries.filter_map(Result::ok) {
                let log =
                    std::fs::read_to_string(entry.path().join("monitor.log")).unwrap_or_default();
                hint.push_str(&format!(
                    "\n--- {}: monitor.log\n{log}",
                    entry.path().display()
                ));
            }
        }
        hint
    }

    /// `ps -a`'s line for `name`.
    fn ps_line(&self, name: &str) -> Option<String> {
        self.ok(&["ps", "-a"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(str::to_owned)
    }

    /// Waits until `ps -a` shows `name` with a status containing `needle`.
    fn wait_for_status(&self, name: &str, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let line = self.ps_line(name).unwrap_or_default();
            if line.contains(needle) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not become {needle:?} within {limit:?}: {line}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The pids of processes of this test whose command line contains `program`.
    fn pids_of(&self, program: &str) -> Vec<i32> {
        let mut pids: Vec<i32> = processes_mentioning(self.k.runtime_dir())
            .into_iter()
            .chain(processes_mentioning(self.data.path()))
            .filter(|p| p.contains(program))
            .filter_map(|p| p.split(':').next().and_then(|pid| pid.parse().ok()))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// No VM process, run directory or sandbox directory of this test is left.
    fn assert_nothing_left(&self) {
        self.k.assert_nothing_left(CLEANUP);
        let deadline = Instant::now() + CLEANUP;
        loop {
            let procs = processes_mentioning(self.data.path());
            let dirs: Vec<_> = std::fs::read_dir(self.data.path().join("sandboxes"))
                .map(|e| e.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default();
            if procs.is_empty() && dirs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: processes {procs:?}, sandbox dirs {dirs:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn create_start_exec_stop_rm_round_trip_outlives_the_cli() {
    let Some(b) = Boxes::new("create_start_exec_stop_rm_round_trip_outlives_the_cli") else {
        return;
    };
    assert_eq!(b.ok(&["create", "--name", "rt", "--memory", "256"]), "rt\n");
    let dup = b.out(&["create", "--name", "rt"]);
    assert_eq!(dup.status.code(), Some(125));
    assert!(
        text(&dup.stderr).contains("already exists"),
        "{}",
        text(&dup.stderr)
    );
    let bad = b.out(&["create", "--name", "../x"]);
    assert!(
        text(&bad.stderr).contains("invalid sandbox name"),
        "{}",
        text(&bad.stderr)
    );
    assert!(b.ps_line("rt").unwrap().contains("created"));
    assert!(
        b.ok(&["ps"]).lines().count() == 1,
        "ps without -a lists running ones only"
    );

    // `start` returns once the agent answers; the VM outlives that CLI process.
    assert_eq!(b.ok(&["start", "rt"]), "rt\n");
    assert!(b.ps_line("rt").unwrap().contains("running"));
    assert!(b.ok(&["ps", "-q"]).contains("rt"));
    let out = b.out(&[
        "exec",
        "rt",
        "--",
        "sh",
        "-c",
        "echo $((6*7)) > /tmp/state; echo out; echo err >&2; hostname; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\nrt\n");
    assert_eq!(text(&out.stderr), "err\n");
    // Same VM for the next exec: the file in its tmpfs is still there.
    assert_eq!(b.ok(&["exec", "rt", "--", "cat", "/tmp/state"]), "42\n");
    let piped = b.out_with_stdin(&["exec", "rt", "--", "wc", "-c"], &[7u8; 100_000]);
    assert_eq!(text(&piped.stdout).trim(), "100000");
    let missing = b.out(&["exec", "rt", "--", "no-such-program"]);
    assert_eq!(missing.status.code(), Some(127));

    let inspect: String = b.ok(&["inspect", "rt"]);
    assert!(inspect.contains("\"status\": \"running\""), "{inspect}");
    assert!(inspect.contains("\"memory_mib\": 256"), "{inspect}");
    assert!(b.ok(&["logs", "rt"]).contains("agent listening on vsock"));

    assert_eq!(b.ok(&["stop", "rt"]), "rt\n");
    assert!(b.ps_line("rt").unwrap().contains("exited (stopped)"));
    let stopped = b.out(&["exec", "rt", "--", "true"]);
    assert_eq!(stopped.status.code(), Some(125));
    assert!(
        text(&stopped.stderr).contains("is not running"),
        "{}",
        text(&stopped.stderr)
    );
    // The console of the last run stays readable.
    assert!(b.ok(&["logs", "rt"]).contains("agent listening on vsock"));
    b.k.assert_nothing_left(CLEANUP);

    // A second start boots a fresh VM from the same spec.
    b.ok(&["start", "rt"]);
    let fresh = b.out(&["exec", "rt", "--", "cat", "/tmp/state"]);
    assert_ne!(fresh.status.code(), Some(0), "a new boot has an empty /tmp");
    let busy = b.out(&["rm", "rt"]);
    assert_eq!(busy.status.code(), Some(125));
    assert!(
        text(&busy.stderr).contains("is running"),
        "{}",
        text(&busy.stderr)
    );
    assert_eq!(b.ok(&["rm", "-f", "rt"]), "rt\n");
    assert!(b.ps_line("rt").is_none());
    let gone = b.out(&["exec", "rt", "--", "true"]);
    assert!(
        text(&gone.stderr).contains("no sandbox named"),
        "{}",
        text(&gone.stderr)
    );
    b.assert_nothing_left();
}

#[test]
fn a_killed_vmm_or_monitor_shows_as_exited_with_the_reason() {
    let Some(b) = Boxes::new("a_killed_vmm_or_monitor_shows_as_exited_with_the_reason") else {
        return;
    };
    b.ok(&["create", "--name", "crash", "--memory", "256"]);
    b.ok(&["start", "crash"]);
    let qemu = b.pids_of("qemu-system");
    assert_eq!(qemu.len(), 1, "one qemu: {qemu:?}");
    kill(Pid::from_raw(qemu[0]), Signal::SIGKILL).unwrap();
    let line = b.wait_for_status("crash", "exited", CLEANUP);
    assert!(
        line.contains("the VMM crashed: it was killed by signal 9 (SIGKILL)"),
        "{line}"
    );
    let inspect = b.ok(&["inspect", "crash"]);
    assert!(inspect.contains("\"Killed\": 9"), "{inspect}");
    // The helpers went with it.
    b.k.assert_nothing_left(CLEANUP);

    // The monitor itself killed: its VM goes too, and ps says so.
    b.ok(&["start", "crash"]);
    let monitor = b.pids_of("__sandbox-monitor");
    assert_eq!(monitor.len(), 1, "one monitor: {monitor:?}");
    kill(Pid::from_raw(monitor[0]), Signal::SIGKILL).unwrap();
    let line = b.wait_for_status("crash", "exited", CLEANUP);
    assert!(line.contains("the sandbox monitor died"), "{line}");
    b.k.assert_nothing_left(CLEANUP);
    b.ok(&["rm", "crash"]);
    b.assert_nothing_left();
}
