//! The libkrun VMM child (`krunbox __krun-vmm RUNDIR`) against the real, linked libkrun, on
//! hosts that cannot run a VM: configuration through the real `krun_*` calls, their errors as
//! the parent sees them, and the lifeline and signal that remove the run directory. Nothing
//! here enters a VM (`--no-enter`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A run directory with a configuration, as the parent writes it.
struct RunDir {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: tempfile::TempDir,
    share: tempfile::TempDir,
}

impl RunDir {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vm");
        std::fs::create_dir(&dir).unwrap();
        Self {
            _tmp: tmp,
            dir,
            root: tempfile::tempdir().unwrap(),
            share: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes krun-vm.json; `edit` changes the JSON first.
    fn write_config(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let guest_init = self.dir.join("fake-guest-init");
        std::fs::write(&guest_init, b"\x7fELF not really an agent").unwrap();
        let kernel = self.dir.join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF").unwrap();
        let mut config = serde_json::json!({
            "run_dir": self.dir,
            "cpus": 2,
            "memory_mib": 256,
            "root": self.root.path(),
            "root_read_only": false,
            "shares": [{"tag": "share1", "host_path": self.share.path(), "read_only": true}],
            "guest_init": guest_init,
            "kernel": {"path": kernel, "format": "Elf"},
            "network": "Tsi",
            "agent_port": 1024,
            "agent_socket": self.dir.join("agent.sock"),
            "net_socket": self.dir.join("net.sock"),
            "console_pipe": self.dir.join("console.pipe"),
            "guest_config": ["krunbox.port=1024", "krunbox.vmm=libkrun"],
            "log_level": 2
        });
        edit(&mut config);
        std::fs::write(
            self.dir.join("krun-vm.json"),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
    }

    /// Starts the child, always with `--no-enter`: KVM here (if any) must never run a guest.
    fn spawn(&self) -> (Child, BufReader<ChildStdout>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_krunbox"))
            .arg("__krun-vmm")
            .arg(&self.dir)
            .arg("--no-enter")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        (child, stdout)
    }
}

impl RunDir {
    /// [`spawn`](Self::spawn), and the child's first word, which must be `configured`.
    fn spawn_configured(&self) -> (Child, BufReader<ChildStdout>) {
        let (mut child, mut stdout) = self.spawn();
        let event = first_event(&mut stdout);
        assert_eq!(
            event,
            serde_json::json!({"event": "configured"}),
            "{}",
            stderr_of(&mut child)
        );
        (child, stdout)
    }
}

fn first_event(stdout: &mut BufReader<ChildStdout>) -> serde_json::Value {
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Waits (generously: a loaded 2-core machine) for the child to exit.
fn exit_code(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the VMM child did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

#[test]
fn libkrun_accepts_the_configuration_and_the_lifeline_removes_the_run_directory() {
    let run = RunDir::new();
    // The read-only root of a shared image.
    run.write_config(|config| config["root_read_only"] = true.into());
    let (mut child, _stdout) = run.spawn_configured();
    assert!(run.dir.exists());
    drop(child.stdin.take());
    assert_eq!(exit_code(&mut child), Some(128 + 15));
    assert!(!run.dir.exists(), "the run directory outlived the lifeline");
}

/// The confinement of `backend/krun/confine.rs` is in place before libkrun would start its
/// virtio-fs workers: a seccomp filter on every thread and, as root, no `CAP_MKNOD` or
/// `CAP_SETFCAP` in any set. (The attack itself, a guest root planting setuid files and
/// device nodes in a share, runs on libkrun in the KVM host: `adversarial` `virtiofs::`.)
#[test]
fn the_configured_child_is_confined_before_it_would_enter() {
    let run = RunDir::new();
    run.write_config(|_| {});
    let (mut child, _stdout) = run.spawn_configured();
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap();
    for task in tasks {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("{name} in {status}"))
        };
        // 2: a filter (SECCOMP_MODE_FILTER).
        assert_eq!(field("Seccomp:"), "2", "{status}");
        if nix::unistd::geteuid().is_root() {
            const MKNOD: u64 = 1 << 27;
            const SETFCAP: u64 = 1 << 31;
            for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:"] {
                let bits = u64::from_str_radix(&field(set), 16).unwrap();
                assert_eq!(bits & (MKNOD | SETFCAP), 0, "{set} {bits:x}");
            }
            // Everything libkrun's virtio-fs needs to serve guest ids stays.
            let bounding = u64::from_str_radix(&field("CapBnd:"), 16).unwrap();
            assert_ne!(bounding & (1 << 7), 0, "CAP_SETUID kept");
        }
    }
    drop(child.stdin.take());
    assert_eq!(exit_code(&mut child), Some(128 + 15));
}

#[test]
fn the_user_network_helper_runs_beside_libkrun_and_ends_with_it() {
    let run = RunDir::new();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    run.write_config(|config| {
        config["network"] = serde_json::json!({"User": {
            "config": {
                "policy": {"allow_hosts": [], "allow_nets": []},
                "publish": [{"host": format!("127.0.0.1:{port}"), "guest_port": 80}],
                "hosts": []
            },
            "log": null
        }});
    });
    let (mut child, _stdout) = run.spawn_configured();
    // libkrun took the card (krun_add_net_unixstream); the helper listens for it and has
    // bound the published port.
    assert!(run.dir.join("net.sock").exists());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(child.stdin.take());
    assert_eq!(exit_code(&mut child), Some(128 + 15));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the network helper outlived the VMM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_network_helper_that_dies_ends_the_vm_and_says_so() {
    let run = RunDir::new();
    run.write_config(|config| {
        config["network"] = serde_json::json!({"User": {
            "config": {"policy": {"allow_hosts": [], "allow_nets": []}, "publish": [], "hosts": []},
            "log": null
        }});
    });
    let (mut child, mut stdout) = run.spawn_configured();
    // The helper is the child's child with `__net` on its command line.
    let helper = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            ppid == Some(child.id()) && cmdline.windows(5).any(|w| w == b"__net")
        })
        .expect("the network helper runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(
        first_event(&mut stdout),
        serde_json::json!({"event": "helper-died", "helper": "Network"})
    );
    assert_eq!(exit_code(&mut child), Some(128 + 15));
    assert!(!run.dir.exists(), "the run directory went with the VM");
}

#[test]
fn sigterm_as_sent_when_the_parent_dies_removes_the_run_directory() {
    let run = RunDir::new();
    run.write_config(|config| config["network"] = "Disabled".into());
    let (mut child, _stdout) = run.spawn_configured();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut child), Some(128 + 15));
    assert!(!run.dir.exists());
}

#[test]
fn a_krun_error_reaches_the_parent_naming_the_call_and_errno() {
    let run = RunDir::new();
    run.write_config(|_| {});
    // libkrun refuses to listen where a file already is.
    let socket = run.dir.join("agent.sock");
    std::fs::write(&socket, b"").unwrap();
    let (mut child, mut stdout) = run.spawn();
    let event = first_event(&mut stdout);
    assert_eq!(event["event"], "failed", "{event}");
    let message = event["message"].as_str().unwrap();
    assert_eq!(
        message,
        format!(
            "krun_add_vsock_port2(1024, {}) failed: File exists (errno 17)",
            socket.display()
        )
    );
    assert_eq!(exit_code(&mut child), Some(125));
}

#[test]
fn a_configuration_for_another_directory_or_a_missing_agent_is_refused() {
    let run = RunDir::new();
    run.write_config(|config| config["run_dir"] = "/somewhere/else".into());
    let (mut child, mut stdout) = run.spawn();
    let event = first_event(&mut stdout);
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("/somewhere/else")),
        "{event}"
    );
    assert_eq!(exit_code(&mut child), Some(125));

    let run = RunDir::new();
    run.write_config(|config| config["guest_init"] = "/nonexistent/guest-init".into());
    let (mut child, mut stdout) = run.spawn();
    let event = first_event(&mut stdout);
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("/nonexistent/guest-init")),
        "{event}"
    );
    assert_eq!(exit_code(&mut child), Some(125));
}
