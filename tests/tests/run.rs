//! `krunbox run` end to end: real guests under the QEMU backend (TCG here), driven through
//! the real `krunbox` binary. See the crate docs for prerequisites; without them these tests
//! skip loudly, unless KRUNBOX_REQUIRE_E2E=1 (CI), where they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::Duration;

use krunbox_tests::{e2e, limits_row, status_mask, text, wait_timeout, Captured, Running, TestPty};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

const CLEANUP: Duration = Duration::from_secs(15);
const RUN_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn exit_code_and_separate_stdout_and_stderr() {
    let Some(k) = e2e("exit_code_and_separate_stdout_and_stderr") else {
        return;
    };
    let out = k.run(
        &[
            "--",
            "sh",
            "-c",
            // Through /dev's standard links to /proc/self/fd, as well.
            "echo to-out > /dev/fd/1; echo to-err > /dev/stderr; . /etc/os-release; echo $ID; \
             exit 7",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-out\nkrunbox\n");
    assert_eq!(text(&out.stderr), "to-err\n");
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn what_the_command_leaves_running_ends_with_it() {
    let Some(k) = e2e("what_the_command_leaves_running_ends_with_it") else {
        return;
    };
    // As a container's processes die with its init: a background job and a daemon in a
    // session of its own, both holding stdout, do not hold up the run (else it would last
    // their 900 s and fail at the harness's limit), and their later output is not seen.
    let out = k.run(
        &[
            "--",
            "sh",
            "-c",
            "(sleep 900; echo late) & setsid sh -c 'sleep 900; echo later' & echo hi; exit 3",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn a_missing_command_exits_127_with_a_message() {
    let Some(k) = e2e("a_missing_command_exits_127_with_a_message") else {
        return;
    };
    let out = k.run(&["--", "no-such-command-here"], b"");
    assert_eq!(
        out.status.code(),
        Some(127),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("no-such-command-here"),
        "stderr: {}",
        text(&out.stderr)
    );
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn stdin_is_piped_to_the_command() {
    let Some(k) = e2e("stdin_is_piped_to_the_command") else {
        return;
    };
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let out = k.run(&["--", "sha256sum"], &input);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let expected = hex::encode(Sha256::digest(&input));
    assert_eq!(text(&out.stdout), format!("{expected}  -\n"));
}

#[test]
fn env_workdir_hostname_and_a_rootfs_directory() {
    let Some(k) = e2e("env_workdir_hostname_and_a_rootfs_directory") else {
        return;
    };
    let rootfs = tempfile::tempdir().unwrap();
    let busybox = krunbox_tests::busybox();
    for dir in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "srv/data"] {
        std::fs::create_dir_all(rootfs.path().join(dir)).unwrap();
    }
    std::fs::copy(&busybox, rootfs.path().join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "pwd", "hostname", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.path().join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.path().join("marker"), "from-the-host-dir\n").unwrap();
    std::env::set_var("KRUNBOX_E2E_FROM_HOST", "copied");
    let out = k.run(
        &[
            "-e",
            "GREETING=hello world",
            "-e",
            "KRUNBOX_E2E_FROM_HOST",
            "-w",
            "/srv/data",
            "--hostname",
            "e2e-box",
            rootfs.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; echo $KRUNBOX_E2E_FROM_HOST; pwd; cat /marker; hostname",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "hello world\ncopied\n/srv/data\nfrom-the-host-dir\ne2e-box\n"
    );
}

#[test]
fn a_user_gets_its_groups_from_the_image_and_group_add() {
    let Some(k) = e2e("a_user_gets_its_groups_from_the_image_and_group_add") else {
        return;
    };
    let rootfs = tempfile::tempdir().unwrap();
    for dir in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "home/app"] {
        std::fs::create_dir_all(rootfs.path().join(dir)).unwrap();
    }
    std::fs::copy(krunbox_tests::busybox(), rootfs.path().join("bin/busybox")).unwrap();
    for applet in ["sh", "id", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.path().join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        rootfs.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        rootfs.path().join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:bob,app\nwheel:x:10:\naudio:x:29:bob\n",
    )
    .unwrap();
    // As docker run: -u app is app with its memberships (staff, not audio), --group-add adds
    // one by name and one by number; an explicit :group has no memberships.
    let out = k.run(
        &[
            "-u",
            "app",
            "--group-add",
            "wheel",
            "--group-add",
            "7",
            rootfs.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "id -u; id -G",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let said = text(&out.stdout);
    let mut lines = said.lines();
    assert_eq!(lines.next(), Some("1000"), "{said}");
    let mut ids: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
    ids.sort_unstable();
    assert_eq!(ids, ["10", "1000", "50", "7"], "{said}");
    // An unknown group is krunbox's error (125), said before any VM boots.
    let out = k.run(
        &[
            "--group-add",
            "nosuch",
            rootfs.path().to_str().unwrap(),
            "--",
            "true",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nosuch"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ulimit_sets_the_command_s_limits_before_it_becomes_its_user() {
    let Some(k) = e2e("ulimit_sets_the_command_s_limits_before_it_becomes_its_user") else {
        return;
    };
    // A hard limit far above the agent's own (4096 open files), for a user who could not
    // raise it: set while the agent is still root, as Docker's --ulimit is; and above the
    // kernel's default fs.nr_open (1048576), which guest-init raises as systemd does.
    let out = k.run(
        &[
            "--ulimit",
            "nofile=100000:2000000",
            "--ulimit",
            "core=unlimited",
            "--ulimit",
            "nproc=77",
            "-u",
            "65534",
            "--",
            "sh",
            "-c",
            "id -u; cat /proc/self/limits",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let limits = text(&out.stdout);
    assert!(limits.starts_with("65534\n"), "{limits}");
    assert_eq!(limits_row(&limits, "Max open files"), ["100000", "2000000"]);
    assert_eq!(
        limits_row(&limits, "Max core file size"),
        ["unlimited", "unlimited"]
    );
    assert_eq!(limits_row(&limits, "Max processes"), ["77", "77"]);
    // Bad limits are krunbox's error (125), said before any VM boots.
    for bad in ["nofile=5:3", "files=10", "nofile=lots"] {
        let out = k.run(&["--ulimit", bad, "--", "true"], b"");
        assert_eq!(
            out.status.code(),
            Some(125),
            "--ulimit {bad}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("--ulimit"),
            "{}",
            text(&out.stderr)
        );
    }
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn dropped_capabilities_stay_dropped_for_root_in_the_guest() {
    let Some(k) = e2e("dropped_capabilities_stay_dropped_for_root_in_the_guest") else {
        return;
    };
    // The attacks of a root command whose capabilities were taken: set the hostname
    // (SYS_ADMIN), make a device node (MKNOD), read another user's private file
    // (DAC_OVERRIDE), change that file's mode (FOWNER). CHOWN alone is left, and works.
    let attacks = "grep -E '^(CapBnd|CapEff|CapAmb|NoNewPrivs):' /proc/self/status; \
                   hostname krunbox-attacker 2>/dev/null; echo hostname=$?; \
                   mknod /tmp/mem c 1 1 2>/dev/null; echo mknod=$?; \
                   echo secret > /tmp/private; chmod 600 /tmp/private; \
                   chown 65534 /tmp/private; echo chown=$?; \
                   cat /tmp/private 2>/dev/null; echo read=$?; \
                   chmod 644 /tmp/private 2>/dev/null; echo chmod=$?";
    let status = |out: &std::process::Output| {
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let narrowed = k.run(
        &[
            "--cap-drop",
            "ALL",
            "--cap-add",
            "chown",
            "--security-opt",
            "no-new-privileges",
            "--",
            "sh",
            "-c",
            attacks,
        ],
        b"",
    );
    let narrowed = status(&narrowed);
    const CAP_CHOWN: u64 = 1;
    assert_eq!(status_mask(&narrowed, "CapBnd"), CAP_CHOWN, "{narrowed}");
    assert_eq!(status_mask(&narrowed, "CapEff"), CAP_CHOWN, "{narrowed}");
    assert_eq!(status_mask(&narrowed, "CapAmb"), 0, "{narrowed}");
    assert_eq!(status_mask(&narrowed, "NoNewPrivs"), 1, "{narrowed}");
    for refused in ["hostname", "mknod", "read", "chmod"] {
        assert!(
            !narrowed.contains(&format!("{refused}=0")),
            "{refused} worked without its capability:\n{narrowed}"
        );
    }
    assert!(narrowed.contains("chown=0"), "{narrowed}");
    assert!(!narrowed.contains("secret"), "{narrowed}");
    // The same attacks as the guest's plain root all work: the options made the difference.
    let plain = status(&k.run(&["--", "sh", "-c", attacks], b""));
    assert_eq!(status_mask(&plain, "NoNewPrivs"), 0, "{plain}");
    for allowed in ["hostname", "mknod", "chown", "read", "chmod"] {
        assert!(
            plain.contains(&format!("{allowed}=0")),
            "{allowed}:\n{plain}"
        );
    }
    // Unknown capabilities and security options are krunbox's error (125), said before any
    // VM boots.
    for bad in [
        &["--cap-add", "NET_RAWR"][..],
        &["--security-opt", "seccomp=unconfined"],
    ] {
        let out = k.run(&[bad, &["--", "true"]].concat(), b"");
        assert_eq!(
            out.status.code(),
            Some(125),
            "{bad:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains(bad[0]), "{}", text(&out.stderr));
    }
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn a_profile_gives_its_options_and_the_command_line_wins() {
    let Some(k) = e2e("a_profile_gives_its_options_and_the_command_line_wins") else {
        return;
    };
    if krunbox_tests::backend() == "krun" {
        // Profiles are the command line's business, before any backend is chosen: the QEMU
        // run covers them, and CI's libkrun half (an emulated KVM host) has no time to spare.
        eprintln!("SKIPPED on libkrun: profiles are backend-independent (tested under QEMU)");
        return;
    }
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("krunbox.toml"),
        r#"
[profile.agent]
env = ["FROM_PROFILE=project", "OVERRIDDEN=profile"]
memory = 384
workdir = "/tmp"

[profile.greedy]
volumes = ["/etc:/host-etc"]
"#,
    )
    .unwrap();
    // The user's own file may share host directories; a project's may not.
    let config = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("mark"), "shared by the user's profile\n").unwrap();
    std::fs::create_dir(config.path().join("krunbox")).unwrap();
    std::fs::write(
        config.path().join("krunbox/profiles.toml"),
        format!(
            "[profile.mine]\nenv = [\"FROM_PROFILE=user\"]\nvolumes = [\"{}:/mine:ro\"]\n",
            shared.path().display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        k.krunbox(args)
            .current_dir(project.path())
            .env("XDG_CONFIG_HOME", config.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run krunbox")
    };
    // 1 when the guest has less than 420 MiB (the profile's 384), 0 with the default 512.
    let small = "awk '/MemTotal/ { print ($2 < 430080) }' /proc/meminfo";

    let out = run(&[
        "run",
        "--profile",
        "agent",
        "-e",
        "OVERRIDDEN=cli",
        "--",
        "sh",
        "-c",
        &format!("echo $FROM_PROFILE $OVERRIDDEN; pwd; {small}"),
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "project cli\n/tmp\n1\n");

    let out = run(&[
        "run",
        "--profile",
        "mine",
        "--memory",
        "512",
        "--",
        "sh",
        "-c",
        &format!("echo $FROM_PROFILE; cat /mine/mark; {small}"),
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "user\nshared by the user's profile\n0\n");

    let out = run(&["run", "--profile", "greedy", "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(125),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("may not"),
        "stderr: {}",
        text(&out.stderr)
    );
    let out = run(&["run", "--profile", "nosuch", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("no profile \"nosuch\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn fifty_megabytes_of_output_arrive_intact() {
    let Some(k) = e2e("fifty_megabytes_of_output_arrive_intact") else {
        return;
    };
    let out = k.run(
        &[
            "--memory",
            "768",
            "--",
            "sh",
            "-c",
            "head -c 52428800 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 52_428_800);
    let digest = hex::encode(Sha256::digest(&out.stdout));
    assert_eq!(text(&out.stderr), format!("{digest}  /tmp/blob\n"));
}

#[test]
fn sigterm_is_forwarded_and_the_command_status_returned() {
    let Some(k) = e2e("sigterm_is_forwarded_and_the_command_status_returned") else {
        return;
    };
    let (mut child, stdout, stderr) = Running::captured(&mut k.krunbox([
        "run",
        "--",
        "sh",
        "-c",
        "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done",
    ]));
    stdout.wait_for_beside("ready\n", RUN_LIMIT, Some(&stderr));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_timeout(&mut child, RUN_LIMIT);
    assert_eq!(status.code(), Some(42), "stderr: {}", stderr.text());
    assert!(stdout.text().contains("got-term"));
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn ctrl_c_is_forwarded_and_a_second_one_stops_the_vm() {
    let Some(k) = e2e("ctrl_c_is_forwarded_and_a_second_one_stops_the_vm") else {
        return;
    };
    let (mut child, stdout, stderr) = Running::captured(&mut k.krunbox([
        "run",
        "--",
        "sh",
        "-c",
        "trap 'echo got-int' INT; echo ready; while true; do sleep 0.1; done",
    ]));
    stdout.wait_for_beside("ready\n", RUN_LIMIT, Some(&stderr));
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    stdout.wait_for_beside("got-int\n", Duration::from_secs(30), Some(&stderr));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the command ignores the first Ctrl-C"
    );
    kill(pid, Signal::SIGINT).unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "stderr: {}", stderr.text());
    assert!(
        stderr.text().contains("stopping the VM"),
        "{}",
        stderr.text()
    );
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn kill_9_of_krunbox_leaves_no_processes_sockets_or_directories() {
    let Some(k) = e2e("kill_9_of_krunbox_leaves_no_processes_sockets_or_directories") else {
        return;
    };
    let mut child = k
        .krunbox(["run", "--", "sh", "-c", "echo ready; sleep 1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(Running)
        .unwrap();
    let stdout = Captured::start(child.stdout.take().unwrap());
    stdout.wait_for("ready\n", RUN_LIMIT);
    let running = krunbox_tests::processes_mentioning(k.runtime_dir());
    // Each backend's processes and sockets: QEMU's supervisor and helpers, or libkrun's VMM
    // child (virtio-fs and vsock in-process) and the gateway.
    let (processes, run_sockets): (&[&str], &[&str]) = match krunbox_tests::backend() {
        "krun" => (&["__krun-vmm", "__net"], &["agent.sock", "net.sock"]),
        _ => (
            &[
                "qemu-system",
                "vhost-device-vsock",
                "virtiofsd",
                "__qemu-supervisor",
            ],
            &["vm.vsock", "fs0.sock"],
        ),
    };
    for name in processes {
        assert!(
            running.iter().any(|p| p.contains(name)),
            "{name} should be running: {running:?}"
        );
    }
    let sockets: Vec<_> = std::fs::read_dir(k.runtime_dir())
        .unwrap()
        .filter_map(Result::ok)
        .flat_map(|run_dir| std::fs::read_dir(run_dir.path()).unwrap())
        .filter_map(Result::ok)
        .filter(|f| {
            f.path()
                .extension()
                .is_some_and(|e| e == "sock" || e == "vsock")
        })
        .collect();
    let names: Vec<String> = sockets
        .iter()
        .map(|s| s.file_name().to_string_lossy().into_owned())
        .collect();
    for socket in run_sockets {
        assert!(
            names.iter().any(|n| n == socket),
            "{socket} exists while running: {names:?}"
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn a_kernel_that_cannot_boot_is_a_clear_error() {
    let Some(k) = e2e("a_kernel_that_cannot_boot_is_a_clear_error") else {
        return;
    };
    let bogus = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bogus.path(), b"this is not a kernel").unwrap();
    let out = k.run(
        &[
            "--kernel",
            bogus.path().to_str().unwrap(),
            "--boot-timeout",
            "30",
            "--",
            "true",
        ],
        b"",
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    if krunbox_tests::backend() == "krun" {
        // libkrun loads the kernel itself: krunbox checks its format first and says so.
        assert!(stderr.contains("not a kernel libkrun can load"), "{stderr}");
    } else {
        assert!(
            stderr.contains("the VM stopped before its agent came up"),
            "{stderr}"
        );
        assert!(
            stderr.contains("qemu said"),
            "QEMU's own error is shown: {stderr}"
        );
    }
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn an_agent_that_never_answers_times_out_with_the_console_tail() {
    let Some(k) = e2e("an_agent_that_never_answers_times_out_with_the_console_tail") else {
        return;
    };
    // busybox as the guest's init: it runs (no panic, no power-off) but never serves the
    // agent's port.
    let started = std::time::Instant::now();
    let out = k
        .krunbox(["run", "--boot-timeout", "2", "--", "true"])
        .env("KRUNBOX_GUEST_INIT", krunbox_tests::busybox())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert!(
        stderr.contains("the guest agent did not come up within 2s"),
        "{stderr}"
    );
    assert!(stderr.contains("last console lines"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn a_pty_session_has_a_terminal_that_follows_resizes() {
    let Some(k) = e2e("a_pty_session_has_a_terminal_that_follows_resizes") else {
        return;
    };
    let pty = TestPty::open(30, 100);
    let mut cmd = k.krunbox(["run", "-it", "--", "sh"]);
    pty.attach(&mut cmd);
    let mut child = cmd.spawn().map(Running).unwrap();
    let master = pty.master.try_clone().unwrap();
    let mut input = master.try_clone().unwrap();
    let output = pty.capture();
    // Typed ahead while the VM boots (the host PTY echoes it before krunbox makes it raw), so
    // the markers are computed by the guest shell: `MARK$((0+1))` echoes as itself.
    input
        .write_all(b"tty; stty size; echo MARK$((0+1))\n")
        .unwrap();
    output.wait_for("MARK1\r\n", RUN_LIMIT);
    let first = output.text();
    assert!(first.contains("/dev/pts/"), "{first}");
    assert!(first.contains("30 100\r\n"), "{first}");

    set_size(&master, 40, 132);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGWINCH).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    input.write_all(b"stty size; echo MARK$((1+1))\n").unwrap();
    output.wait_for("MARK2\r\n", Duration::from_secs(30));
    assert!(output.text().contains("40 132\r\n"), "{}", output.text());

    // Ctrl-C is a key for the guest: it interrupts the guest's sleep, not krunbox.
    input.write_all(b"sleep 100\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    input.write_all(&[0x03]).unwrap();
    input.write_all(b"echo after-ctrl-c; exit 5\n").unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(5), "{}", output.text());
    assert!(output.text().contains("after-ctrl-c"), "{}", output.text());
    k.assert_nothing_left(CLEANUP);
}

fn set_size(master: &std::fs::File, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the call; the fd is open.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    assert_eq!(rc, 0, "TIOCSWINSZ");
}

/// `krunbox doctor` says the backend these tests boot is usable (inside the KVM host of the
/// libkrun half that is libkrun: KVM that runs guests, libkrunfw), and exits 0.
#[test]
fn doctor_says_the_backend_under_test_is_usable() {
    let Some(k) = e2e("doctor_says_the_backend_under_test_is_usable") else {
        return;
    };
    let out = k.krunbox(["doctor"]).output().unwrap();
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}{}", text(&out.stderr));
    let line = format!("backend {}: ok", krunbox_tests::backend());
    assert!(
        said.lines().any(|l| l.starts_with(&line)),
        "no {line:?} in:\n{said}"
    );
}

#[test]
fn timings_account_for_every_step_of_a_run() {
    let Some(k) = e2e("timings_account_for_every_step_of_a_run") else {
        return;
    };
    let out = k.run(&["--timings=json", "--", "true"], b"");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let timings: serde_json::Value = stderr
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON timings on stderr: {stderr}"));
    let step = |key: &str| {
        timings[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing: {timings}"))
    };
    // The guest reported its boot clock, so the boot is split: its kernel took time.
    assert!(step("kernel_init_ms") > 0, "{timings}");
    let steps: u64 = [
        "prepare_ms",
        "vmm_start_ms",
        "firmware_and_kernel_load_ms",
        "kernel_init_ms",
        "agent_start_ms",
        "first_exec_ms",
        "command_ms",
        "power_off_ms",
    ]
    .iter()
    .map(|key| step(key))
    .sum();
    let total = step("total_ms");
    // The steps follow each other without gaps; each is rounded down to whole milliseconds.
    assert!(
        steps <= total && total - steps < 10,
        "steps sum to {steps} ms of {total} ms: {timings}"
    );
    let text_form = k.run(&["--timings", "--", "true"], b"");
    assert!(
        text(&text_form.stderr).contains("krunbox: timings: prepare "),
        "{}",
        text(&text_form.stderr)
    );
}
