//! The libkrun backend's VM lifecycle through the real `krunbox` binary, as a dry run
//! (`KRUNBOX_KRUN_DRY_RUN=1`): the run directory, the `__krun-vmm` child and the real libkrun
//! configured with every `krun_*` call, but never entered — no host of ours can boot libkrun
//! (nested `kvm_pvm`), so no agent ever answers. What is checked is everything around the guest:
//! the boot timeout's error, Ctrl-C while booting, kill -9 of krunbox.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Read;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use krunbox_tests::{e2e, processes_mentioning, wait_timeout, Harness, Running};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Cleanup must be quick; the margin is for a loaded machine.
const CLEANUP: Duration = Duration::from_secs(15);

fn dry_run(k: &Harness, args: &[&str]) -> Running {
    k.krunbox(["run", "--backend", "krun"].iter().chain(args))
        .env("KRUNBOX_KRUN_DRY_RUN", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(Running)
        .expect("spawn krunbox")
}

/// Waits for krunbox to exit; returns its status and its whole stderr (read to the end, so
/// nothing is still in flight when the test looks).
fn finish(mut child: Running, limit: Duration) -> (ExitStatus, String) {
    let mut pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let status = wait_timeout(&mut child, limit);
    (status, reader.join().unwrap_or_default())
}

/// Waits until the VMM child runs and has its run directory; returns its `pid: cmdline`.
fn wait_for_vmm(k: &Harness) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let vmm = processes_mentioning(k.runtime_dir())
            .into_iter()
            .find(|p| p.contains("__krun-vmm"));
        let configured = std::fs::read_dir(k.runtime_dir())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .any(|d| d.path().join("krun-vm.json").is_file());
        if let (Some(vmm), true) = (vmm, configured) {
            return vmm;
        }
        assert!(Instant::now() < deadline, "no __krun-vmm child appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_agent_that_never_answers_times_out_with_the_console_tail() {
    let Some(k) = e2e("krun: an_agent_that_never_answers_times_out_with_the_console_tail") else {
        return;
    };
    let child = dry_run(&k, &["--boot-timeout", "2", "--", "true"]);
    let (status, text) = finish(child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(125), "{text}");
    assert!(
        text.contains("the guest agent did not come up within 2s") && text.contains("agent.sock"),
        "{text}"
    );
    assert!(text.contains("last console lines"), "{text}");
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn kill_9_of_krunbox_leaves_no_vmm_process_socket_or_directory() {
    let Some(k) = e2e("krun: kill_9_of_krunbox_leaves_no_vmm_process_socket_or_directory") else {
        return;
    };
    let mut child = dry_run(&k, &["--boot-timeout", "300", "--", "true"]);
    let vmm = wait_for_vmm(&k);
    assert!(vmm.contains("--no-enter"), "{vmm}");
    child.kill().expect("SIGKILL krunbox");
    child.wait().expect("reap krunbox");
    // The VMM child gets SIGTERM (PR_SET_PDEATHSIG) and its lifeline closes: it removes the
    // run directory and exits.
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn ctrl_c_while_booting_stops_the_vmm() {
    let Some(k) = e2e("krun: ctrl_c_while_booting_stops_the_vmm") else {
        return;
    };
    let child = dry_run(&k, &["--boot-timeout", "300", "--", "true"]);
    wait_for_vmm(&k);
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    kill(pid, Signal::SIGINT).expect("SIGINT krunbox");
    let (status, text) = finish(child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(
        text.contains("interrupted while the VM was booting"),
        "{text}"
    );
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn our_own_kernel_vmlinux_is_taken_and_its_bzimage_refused_with_advice() {
    let test = "krun: our_own_kernel_vmlinux_is_taken_and_its_bzimage_refused_with_advice";
    let Some(k) = e2e(test) else {
        return;
    };
    let Some(kernel) = krunbox_tests::built_kernel(test) else {
        return;
    };
    let vmlinux = kernel.image.with_file_name("vmlinux");
    // The ELF vmlinux gets through detection and `krun_set_kernel` (format 1): the dry run
    // then waits for an agent that never comes.
    let child = dry_run(
        &k,
        &[
            "--kernel",
            vmlinux.to_str().expect("UTF-8 path"),
            "--boot-timeout",
            "1",
            "--",
            "true",
        ],
    );
    let (status, text) = finish(child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(125), "{text}");
    assert!(text.contains("did not come up within 1s"), "{text}");
    // libkrun has no bzImage loader: the payload must be one it decompresses, else a refusal
    // that says what to give instead.
    let child = dry_run(
        &k,
        &[
            "--kernel",
            kernel.image.to_str().expect("UTF-8 path"),
            "--boot-timeout",
            "1",
            "--",
            "true",
        ],
    );
    let (status, text) = finish(child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(125), "{text}");
    assert!(
        text.contains("did not come up")
            || (text.contains("cannot be booted by libkrun") && text.contains("vmlinux")),
        "{text}"
    );
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn ssh_maps_a_host_vsock_port_to_the_agent_socket_through_the_real_libkrun() {
    let Some(k) =
        e2e("krun: ssh_maps_a_host_vsock_port_to_the_agent_socket_through_the_real_libkrun")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    let child = k
        .krunbox([
            "run",
            "--backend",
            "krun",
            "--ssh",
            "--boot-timeout",
            "5",
            "--",
            "true",
        ])
        .env("KRUNBOX_KRUN_DRY_RUN", "1")
        .env("SSH_AUTH_SOCK", &agent)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(Running)
        .expect("spawn krunbox");
    wait_for_vmm(&k);
    let config = std::fs::read_dir(k.runtime_dir())
        .unwrap()
        .filter_map(Result::ok)
        .find_map(|d| std::fs::read_to_string(d.path().join("krun-vm.json")).ok())
        .expect("the VM's configuration");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let relay = &config["ssh_agent_relay"];
    assert_eq!(relay["agent"].as_str(), agent.to_str(), "{config}");
    // The VMM child listens on the filtering relay before it configures libkrun.
    let relay_socket = std::path::PathBuf::from(relay["listen"].as_str().unwrap());
    assert!(relay_socket.starts_with(k.runtime_dir()), "{config}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::os::unix::net::UnixStream::connect(&relay_socket).is_err() {
        assert!(Instant::now() < deadline, "no relay at {relay_socket:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        config["guest_config"]
            .as_array()
            .unwrap()
            .iter()
            .any(|word| word == "krunbox.ssh_agent=1025"),
        "{config}"
    );
    // Every krun_* call, krun_add_vsock_port2(1025, relay, listen = false) included, was
    // accepted: the dry run only fails waiting for the agent.
    let (status, text) = finish(child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(125), "{text}");
    assert!(text.contains("did not come up within 5s"), "{text}");
    assert!(!text.contains("krun_add_vsock_port2"), "{text}");
    k.assert_nothing_left(CLEANUP);
}
