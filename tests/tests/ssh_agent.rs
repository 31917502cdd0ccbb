//! `krunbox run --ssh` end to end: a real `ssh-agent` on the host holding a throwaway key, a
//! real guest under the QEMU backend running the host's `ssh-add` (copied into a root
//! filesystem directory with the libraries it needs). The guest lists the host agent's key
//! and proves it can sign with it (`ssh-add -T`), as a non-root user; without `--ssh` the
//! guest has no agent socket even though krunbox's environment names one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::Output;
use std::time::Duration;

use krunbox_tests::ssh_agent_fixture::{agent_with_a_key, rootfs_with_ssh_add};
use krunbox_tests::{e2e, text};

const CLEANUP: Duration = Duration::from_secs(15);
/// Where guest-init offers the forwarded agent.
const GUEST_SOCKET: &str = "/run/krunbox/ssh-agent.sock";

#[test]
fn the_guest_uses_the_host_agents_key_only_with_ssh() {
    let Some(k) = e2e("the_guest_uses_the_host_agents_key_only_with_ssh") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (agent, key, fingerprint) = agent_with_a_key(dir.path());

    let rootfs = rootfs_with_ssh_add(&key.with_extension("pub"));
    let rootfs = rootfs.path().to_str().unwrap();
    let run = |ssh: bool, script: &str| {
        let mut args = vec!["run"];
        if ssh {
            args.push("--ssh");
        }
        args.extend(["-u", "1000:1000", rootfs, "--", "sh", "-c", script]);
        k.krunbox(&args)
            .env("SSH_AUTH_SOCK", &agent.socket)
            .output()
            .expect("run krunbox")
    };

    let out = run(
        true,
        "echo \"sock=$SSH_AUTH_SOCK uid=$(id -u)\"; ssh-add -l && ssh-add -T /key.pub && echo signed",
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("sock={GUEST_SOCKET} uid=1000\n")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|line| line == fingerprint),
        "the guest should list the host's key {fingerprint:?}:\n{stdout}"
    );
    assert!(stdout.ends_with("signed\n"), "{stdout}");

    let out = run(
        false,
        &format!(
            "echo \"sock=$SSH_AUTH_SOCK\"; test -e {GUEST_SOCKET} && echo present; \
             ssh-add -l; echo status=$?"
        ),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(stdout, "sock=\nstatus=2\n", "no agent without --ssh");
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn ssh_without_a_usable_agent_is_refused_before_booting() {
    let Some(k) = e2e("ssh_without_a_usable_agent_is_refused_before_booting") else {
        return;
    };
    let out = k
        .krunbox(["run", "--ssh", "--", "true"])
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("run krunbox");
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("--ssh: SSH_AUTH_SOCK is not set"),
        "{}",
        text(&out.stderr)
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = k
        .krunbox(["run", "--ssh", "--", "true"])
        .env("SSH_AUTH_SOCK", file.path())
        .output()
        .expect("run krunbox");
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains(&format!(
            "--ssh: SSH_AUTH_SOCK={}: not a socket",
            file.path().display()
        )),
        "{}",
        text(&out.stderr)
    );
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn a_sandbox_created_with_ssh_forwards_the_agent_to_every_exec() {
    let Some(k) = e2e("a_sandbox_created_with_ssh_forwards_the_agent_to_every_exec") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (agent, key, fingerprint) = agent_with_a_key(dir.path());
    let rootfs = rootfs_with_ssh_add(&key.with_extension("pub"));
    let data = krunbox_tests::private_data_dir();
    let krunbox = |args: &[&str]| {
        k.krunbox(args)
            .env("KRUNBOX_DATA_DIR", data.path())
            .env("SSH_AUTH_SOCK", &agent.socket)
            .output()
            .expect("run krunbox")
    };
    let rootfs = rootfs.path().to_str().unwrap();
    let ok = |out: &Output| {
        assert_eq!(
            out.status.code(),
            Some(0),
            "stdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_owned()
    };
    ok(&krunbox(&[
        "create", "--name", "sshbox", "--ssh", "--memory", "256", rootfs,
    ]));
    let started = krunbox(&["start", "sshbox"]);
    let listed = krunbox(&["exec", "sshbox", "--", "ssh-add", "-l"]);
    let as_user = krunbox(&["exec", "-u", "1000:1000", "sshbox", "--", "ssh-add", "-l"]);
    // Removed before asserting, so a failure leaves no VM running.
    let removed = krunbox(&["rm", "-f", "sshbox"]);
    ok(&started);
    assert_eq!(ok(&listed), fingerprint);
    assert_eq!(ok(&as_user), fingerprint);
    ok(&removed);
    k.assert_nothing_left(CLEANUP);
}
