//! The agent serves the host alone, and the host's SSH agent serves the guest only for
//! listing keys and signing.
//!
//! - A guest process (as uid 65534, and as root) connects to guest-init's vsock port at the
//!   loopback CID 1, the host's CID 2 and the guest's own CID 3 and asks it to run a command,
//!   with `agent-probe` (this crate's binary: the real krunbox client over vsock). A control
//!   run of the same probe against a host-mode guest-init shows that it does run commands
//!   when it reaches an agent.
//! - Guest root loads the loopback transport (`vsock_loopback.ko` of the guest's own Debian
//!   kernel, which krunbox never loads) so that CID 1 and the guest's own CID reach
//!   guest-init's listener inside the guest: only the agent's peer check stands, and it refuses.
//! - With `--ssh` and a real host `ssh-agent` holding a key, the guest's `ssh-add -D`
//!   (remove all), `ssh-add -x` (lock) and `ssh-add KEY` (add) fail, and the host agent
//!   still holds exactly its key, unlocked; the guest still lists it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use krunbox_tests::ssh_agent_fixture::{
    agent_with_a_key, busybox_rootfs, copy_program_into, rootfs_with_ssh_add,
};
use krunbox_tests::{e2e, guest_init_binary, text, user_data_dir, Harness, Running};

const CLEANUP: Duration = Duration::from_secs(15);
const PROBE: &str = env!("CARGO_BIN_EXE_agent-probe");
/// Where the probe is in the guest.
const GUEST_PROBE: &str = "/agent-probe";

/// Runs `script` with `sh -c` in a guest of `rootfs` as `user` (`uid:gid`); returns its
/// stdout after asserting that the run itself worked.
fn in_guest(k: &Harness, rootfs: &Path, user: &str, script: &str) -> String {
    let rootfs = rootfs.to_str().unwrap();
    let out = k
        .krunbox(["run", "-u", user, rootfs, "--", "sh", "-c", script])
        .output()
        .expect("run krunbox");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    stdout
}

/// The control: the probe does run a command when it reaches an agent (guest-init in host
/// mode on a Unix socket), so its refusals below are the agent's doing.
fn probe_runs_commands_on_a_reachable_agent() {
    let init = guest_init_binary().expect("guest-init is built (cargo xtask build-init)");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let _agent = Running(
        Command::new(init)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start guest-init in host mode"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "guest-init made no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(PROBE)
        .arg(format!("unix:{}", socket.display()))
        .args(["--", "echo", "reached"])
        .output()
        .expect("run agent-probe");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("ran: ") && stdout.contains("stdout=reached"),
        "{stdout}"
    );
}

#[test]
fn a_guest_process_cannot_run_commands_through_the_agent() {
    let Some(k) = e2e("a_guest_process_cannot_run_commands_through_the_agent") else {
        return;
    };
    probe_runs_commands_on_a_reachable_agent();

    let rootfs = busybox_rootfs();
    copy_program_into(rootfs.path(), Path::new(PROBE), Path::new(GUEST_PROBE));
    let port = krunbox_protocol::AGENT_VSOCK_PORT;
    let script = format!(
        "for cid in 1 2 3; do echo \"cid=$cid $({GUEST_PROBE} vsock:$cid:{port} -- id -u)\"; done"
    );
    for user in ["65534:65534", "0:0"] {
        let stdout = in_guest(&k, rootfs.path(), user, &script);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "as {user}: {stdout}");
        for (line, cid) in lines.iter().zip(1..) {
            assert!(
                line.starts_with(&format!("cid={cid} refused: ")),
                "as {user}, CID {cid} must not reach the agent: {stdout}"
            );
        }
    }
    k.assert_nothing_left(CLEANUP);
}

/// The guest kernel's `vsock_loopback.ko`, from the Debian package of the ABI krunbox boots
/// (`apt-get download`, as `krunbox kernel fetch` does; krunbox keeps only the modules it
/// loads).
fn loopback_module(dir: &Path) -> std::path::PathBuf {
    let current = user_data_dir().join("kernels/current");
    let abi = std::fs::read_to_string(&current).expect("the prepared kernel's ABI");
    let package = format!("linux-image-{}", abi.trim());
    let download = Command::new("apt-get")
        .args(["download", "-q", &package])
        .current_dir(dir)
        .output()
        .expect("run apt-get");
    assert!(download.status.success(), "{}", text(&download.stderr));
    let deb = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("the downloaded .deb");
    let unpacked = dir.join("unpacked");
    let unpack = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .output()
        .expect("run dpkg-deb");
    assert!(unpack.status.success(), "{}", text(&unpack.stderr));
    let module = unpacked
        .join("lib/modules")
        .join(abi.trim())
        .join("kernel/net/vmw_vsock/vsock_loopback.ko");
    assert!(module.is_file(), "no {}", module.display());
    module
}

#[test]
fn guest_root_with_a_loopback_transport_still_cannot_reach_the_agent() {
    let Some(mut k) = e2e("guest_root_with_a_loopback_transport_still_cannot_reach_the_agent")
    else {
        return;
    };
    // The module is the one of Debian's kernel, the QEMU backend's fallback (krunbox's own
    // kernel has no loopback transport, nor modules); libkrun boots libkrunfw's kernel, which
    // loads no modules.
    if std::env::var_os("KRUNBOX_KERNEL").is_some() || krunbox_tests::backend() == "krun" {
        eprintln!("SKIPPED: the loopback module is Debian's kernel's, not this guest kernel's");
        return;
    }
    let (debian_only, _) = krunbox_tests::debian_kernel_data_dir();
    k.use_data_dir(debian_only.path());
    let dir = tempfile::tempdir().unwrap();
    let module = loopback_module(dir.path());
    let rootfs = busybox_rootfs();
    copy_program_into(rootfs.path(), Path::new(PROBE), Path::new(GUEST_PROBE));
    std::fs::copy(&module, rootfs.path().join("vsock_loopback.ko")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.path().join("bin/insmod")).unwrap();
    let port = krunbox_protocol::AGENT_VSOCK_PORT;
    let script = format!(
        "insmod /vsock_loopback.ko && echo loaded; \
         for cid in 1 3; do echo \"cid=$cid $({GUEST_PROBE} vsock:$cid:{port} -- id -u)\"; done"
    );
    let stdout = in_guest(&k, rootfs.path(), "0:0", &script);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"loaded"), "{stdout}");
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, cid) in lines[1..].iter().zip([1, 3]) {
        // Connected (the transport is there) and then closed by the agent before the
        // handshake: "handshake: ...", never "ran: ...".
        assert!(
            line.starts_with(&format!("cid={cid} refused: handshake: ")),
            "CID {cid} must be refused by the agent itself: {stdout}"
        );
    }
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn a_guest_cannot_remove_lock_or_add_keys_of_the_host_agent() {
    let Some(k) = e2e("a_guest_cannot_remove_lock_or_add_keys_of_the_host_agent") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (agent, key, fingerprint) = agent_with_a_key(dir.path());
    let rootfs = rootfs_with_ssh_add(&key.with_extension("pub"));
    // A key of the guest's, which it tries to add to the host's agent.
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "guest-key", "-f"])
        .arg(rootfs.path().join("root/guest_key"))
        .output()
        .expect("run ssh-keygen");
    assert!(keygen.status.success(), "{}", text(&keygen.stderr));

    // stderr too: "Failed to lock agent: agent refused operation" shows the request was sent
    // and refused (mistyped passwords would fail before sending anything).
    let script = "exec 2>&1; ssh-add -D; echo remove-all=$?; \
                  printf 'pw\\npw\\n' | ssh-add -x; echo lock=$?; \
                  ssh-add /root/guest_key; echo add=$?; \
                  ssh-add -l; echo list=$?";
    let rootfs = rootfs.path().to_str().unwrap();
    let out = k
        .krunbox(["run", "--ssh", rootfs, "--", "sh", "-c", script])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output()
        .expect("run krunbox");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    for refused in [
        "Failed to remove all identities.",
        "remove-all=1",
        "Failed to lock agent: agent refused operation",
        "lock=1",
        "Could not add identity \"/root/guest_key\": agent refused operation",
        "add=1",
    ] {
        // Contained, not a line: ssh-add's password prompts have no newline.
        assert!(
            stdout.contains(&format!("{refused}\n")),
            "{refused}: {stdout}"
        );
    }
    assert!(
        stdout.lines().any(|l| l == fingerprint),
        "the guest still lists the key: {stdout}"
    );
    assert!(stdout.ends_with("list=0\n"), "{stdout}");

    // The host's agent: the same one key, unlocked (a locked agent lists none).
    let host = agent.ssh_add(&["-l"]);
    assert_eq!(host.status.code(), Some(0), "{}", text(&host.stderr));
    assert_eq!(text(&host.stdout).trim(), fingerprint);
    k.assert_nothing_left(CLEANUP);
}
