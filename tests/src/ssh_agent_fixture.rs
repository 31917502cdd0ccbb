//! What the SSH agent tests share: a real `ssh-agent` on the host holding a throwaway key, and
//! a root filesystem directory with busybox and the host's `ssh-add` (copied with the
//! libraries it needs), which also takes other host programs the same way.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::Running;

use crate::text;

/// `program` found on `PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.exists())
}

/// A host `ssh-agent -D` of the test's own, killed when dropped.
pub struct HostAgent {
    _process: Running,
    /// Its socket (what `SSH_AUTH_SOCK` names).
    pub socket: PathBuf,
}

impl HostAgent {
    /// Starts one with its socket in `dir`.
    pub fn start(dir: &Path) -> Self {
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
    pub fn ssh_add(&self, args: &[&str]) -> Output {
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
    // A static program: "not a dynamic executable", nothing to copy.
    if !out.status.success() {
        return Vec::new();
    }
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

/// Copies `file` (following links) to `at` (an absolute path) under `root`.
fn copy_into(root: &Path, file: &Path, at: &Path) {
    let target = root.join(at.strip_prefix("/").expect("absolute"));
    std::fs::create_dir_all(target.parent().expect("a parent")).unwrap();
    std::fs::copy(file, &target)
        .unwrap_or_else(|e| panic!("copy {} into the rootfs: {e}", file.display()));
}

/// Copies the host program `program` to `at` under `root`, with the libraries it needs at
/// their own paths.
pub fn copy_program_into(root: &Path, program: &Path, at: &Path) {
    copy_into(root, program, at);
    for library in shared_libraries(program) {
        copy_into(root, &library, &library);
    }
}

/// busybox (`sh`, `echo`, `test`, `id`) and a passwd with root, `user` (1000) and `nobody`
/// (65534).
pub fn busybox_rootfs() -> tempfile::TempDir {
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
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
    rootfs
}

/// [`busybox_rootfs`] with the host's ssh-add (and its libraries) and the public key
/// (ssh-add -T names the key to test by it) as `/key.pub`.
pub fn rootfs_with_ssh_add(public_key: &Path) -> tempfile::TempDir {
    let rootfs = busybox_rootfs();
    let ssh_add = on_path("ssh-add").expect("ssh-add");
    copy_program_into(rootfs.path(), &ssh_add, &ssh_add);
    std::fs::copy(public_key, rootfs.path().join("key.pub")).unwrap();
    rootfs
}

/// A host agent holding a fresh ed25519 key; returns it, the key's path and the agent's
/// `ssh-add -l` line for it.
pub fn agent_with_a_key(dir: &Path) -> (HostAgent, PathBuf, String) {
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
