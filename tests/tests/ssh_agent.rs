//! `krunbox run --ssh` end to end: a real `ssh-agent` on the host holding a throwaway key, a
//! real guest under the QEMU backend running the host's `ssh-add` (copied into a root
//! filesystem directory with the libraries it needs). The guest lists the host agent's key
//! and proves it can sign with it (`ssh-add -T`), as a non-root user; without `--ssh` the
//! guest has no agent socket even though krunbox's environment names one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use krunbox_tests::{e2e, Running};

const CLEANUP: Duration = Duration::from_secs(15);
/// Where guest-init offers the forwarded agent.
const GUEST_SOCKET: &str = "/run/krunbox/ssh-agent.sock";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.exists())
}

/// A host `ssh-agent -D` of the test's own, killed when dropped.
struct HostAgent {
    _process: Running,
    socket: PathBuf,
}

impl HostAgent {
    fn start(dir: &Path) -> Self {
        let socket = dir.join("agent.sock");
        let process = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        let process = Running(process);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            _process: process,
            socket,
        }
    }

    /// `ssh-add ARGS` against this agent.
    fn ssh_add(&self, args: &[&str]) -> Output {
        Command::new("ssh-add")
            .args(args)
            .env("SSH_AUTH_SOCK", &self.socket)
            .output()
            .expect("run ssh-add")
    }
}

/// The shared libraries and the dynamic loader `ldd` lists for `program`.
fn shared_libraries(program: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(program).output().expect("run ldd");
    assert!(out.status.success(), "ldd: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `file` (following links) to the same absolute path under `root`.
fn copy_into(root: &Path, file: &Path) {
    let target = root.join(file.strip_prefix("/").expect("absolute"));
    std::fs::create_dir_all(target.parent().expect("a parent")).unwrap();
    std::fs::copy(file, &target)
        .unwrap_or_else(|e| panic!("copy {} into the rootfs: {e}", file.display()));
}

/// busybox, the host's ssh-add with its libraries, a passwd with a non-root user, and the
/// public key (ssh-add -T names the key to test by it).
fn rootfs_with_ssh_add(public_key: &Path) -> tempfile::TempDir {
    let rootfs = tempfile::tempdir().unwrap();
    let root = rootfs.path();
    for dir in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "root"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy(
        on_path("busybox").expect("busybox"),
        root.join("bin/busybox"),
    )
    .unwrap();
    for applet in ["sh", "echo", "test", "id"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let ssh_add = on_path("ssh-add").expect("ssh-add");
    copy_into(root, &ssh_add);
    for library in shared_libraries(&ssh_add) {
        copy_into(root, &library);
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    std::fs::copy(public_key, root.join("key.pub")).unwrap();
    rootfs
}

/// A host agent holding a fresh ed25519 key; returns it, the key's path and the agent's
/// `ssh-add -l` line for it.
fn agent_with_a_key(dir: &Path) -> (HostAgent, PathBuf, String) {
    for tool in ["ssh-agent", "ssh-add", "ssh-keygen"] {
        assert!(
            on_path(tool).is_some(),
            "{tool} is missing: install openssh-client (scripts/setup.sh does)"
        );
    }
    let agent = HostAgent::start(dir);
    let key = dir.join("id_ed25519");
    let keygen = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "krunbox-e2e-key",
            "-f",
        ])
        .arg(&key)
        .output()
        .expect("run ssh-keygen");
    assert!(keygen.status.success(), "{}", text(&keygen.stderr));
    let added = agent.ssh_add(&[key.to_str().unwrap()]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    let host_list = agent.ssh_add(&["-l"]);
    assert!(host_list.status.success(), "{}", text(&host_list.stderr));
    let fingerprint = text(&host_list.stdout).trim().to_owned();
    assert!(fingerprint.contains("krunbox-e2e-key"), "{fingerprint}");
    (agent, key, fingerprint)
}

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
