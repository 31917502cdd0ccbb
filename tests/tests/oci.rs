//! krunbox as an OCI runtime under a real engine: podman (Debian's, with its conmon) runs each
//! container as a krunbox micro-VM through `krunbox-oci`, a link to the krunbox binary.
//! Podman keeps its images and containers in a directory of the test's own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use krunbox_tests::{e2e, krunbox_binary, text, Harness};

#[path = "shared/test_image.rs"]
mod test_image;

/// podman with storage of its own and krunbox-oci as its runtime.
struct Podman {
    dir: tempfile::TempDir,
    runtime: PathBuf,
    image: String,
}

impl Podman {
    /// `None` after a loud skip (a failure under KRUNBOX_REQUIRE_E2E) without podman or root.
    fn new(test: &str, k: &Harness) -> Option<Self> {
        let missing = if krunbox_tests::ssh_agent_fixture::on_path("podman").is_none() {
            Some("podman is not installed")
        } else if !nix::unistd::geteuid().is_root() {
            Some("needs root: rootless podman with krunbox-oci is not tried yet")
        } else {
            None
        };
        if let Some(why) = missing {
            assert!(
                std::env::var("KRUNBOX_REQUIRE_E2E").is_err() || !nix::unistd::geteuid().is_root(),
                "KRUNBOX_REQUIRE_E2E is set but {why}"
            );
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("kbx-podman-")
            .tempdir_in("/tmp")
            .expect("a temp dir");
        let runtime = dir.path().join("krunbox-oci");
        std::os::unix::fs::symlink(krunbox_binary(), &runtime).expect("link krunbox-oci");
        let mut podman = Self {
            dir,
            runtime,
            image: "localhost/krunbox-oci-test:latest".into(),
        };
        podman.import_image(k);
        Some(podman)
    }

    /// A busybox image, imported from a tarball.
    fn import_image(&mut self, _k: &Harness) {
        let rootfs = self.dir.path().join("image");
        for dir in [
            "bin", "etc", "proc", "sys", "dev", "tmp", "root", "data", "run",
        ] {
            std::fs::create_dir_all(rootfs.join(dir)).expect("mkdir");
        }
        std::fs::copy(krunbox_tests::busybox(), rootfs.join("bin/busybox")).expect("busybox");
        for applet in [
            "sh", "cat", "echo", "uname", "sleep", "tty", "stty", "id", "ls", "touch",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("ln");
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
            .expect("passwd");
        let tarball = self.dir.path().join("image.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .output()
            .expect("run tar");
        assert!(out.status.success(), "tar: {}", text(&out.stderr));
        let out = self.podman(&[
            "import",
            "--change",
            "ENV=PATH=/bin",
            tarball.to_str().expect("UTF-8"),
            &self.image.clone(),
        ]);
        assert!(out.status.success(), "podman import: {}", text(&out.stderr));
    }

    /// podman on the test's own storage.
    fn base(&self) -> Command {
        let storage = self.dir.path();
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(storage.join("storage"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        cmd
    }

    /// podman with krunbox-oci as its runtime; the harness's environment (runtime directory,
    /// backend, guest agent) reaches krunbox-oci through podman and conmon.
    fn command(&self, k: &Harness, args: &[&str]) -> Command {
        let mut cmd = self.base();
        k.pass_environment(&mut cmd);
        cmd.arg("--runtime").arg(&self.runtime).args(args);
        cmd
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.base().args(args).output().expect("run podman")
    }

    fn run(&self, k: &Harness, args: &[&str]) -> Output {
        self.command(k, args).output().expect("run podman")
    }
}

/// The host's `uname -r`, which a container must not see.
fn host_kernel() -> String {
    let out = Command::new("uname").arg("-r").output().expect("run uname");
    text(&out.stdout)
}

fn monitors_of(dir: &Path) -> Vec<String> {
    krunbox_tests::processes_mentioning(dir)
}

#[test]
fn podman_runs_each_container_as_a_micro_vm_with_its_exit_code_mounts_and_terminal() {
    let test = "podman_runs_each_container_as_a_micro_vm_with_its_exit_code_mounts_and_terminal";
    let Some(k) = e2e(test) else { return };
    let Some(podman) = Podman::new(test, &k) else {
        return;
    };
    let image = podman.image.clone();

    // The guest's own kernel, not the host's; podman's default capabilities (the config's
    // process.capabilities), not all of a guest root's.
    let out = podman.run(
        &k,
        &[
            "run",
            "--rm",
            &image,
            "sh",
            "-c",
            "uname -r; grep ^CapBnd: /proc/self/status",
        ],
    );
    assert!(
        out.status.success(),
        "podman run: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let bounding = krunbox_tests::status_mask(&text(&out.stdout), "CapBnd");
    const CAP_CHOWN: u64 = 1;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    assert_eq!(
        bounding & (CAP_CHOWN | CAP_SYS_ADMIN),
        CAP_CHOWN,
        "{bounding:x}"
    );
    let host = host_kernel();
    let stdout = text(&out.stdout);
    let guest = stdout.lines().next().unwrap_or_default().to_owned();
    assert_ne!(
        guest.trim(),
        host.trim(),
        "the container saw the host's kernel"
    );
    assert!(!guest.trim().is_empty());

    // Exit codes reach podman.
    let out = podman.run(
        &k,
        &[
            "run",
            "--rm",
            &image,
            "sh",
            "-c",
            "echo to-stderr >&2; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("to-stderr"));

    // `--ulimit` (process.rlimits in the config), `--cap-drop`/`--cap-add`
    // (process.capabilities) and no-new-privileges hold in the guest.
    let out = podman.run(
        &k,
        &[
            "run",
            "--rm",
            "--ulimit",
            "nofile=1000:2000",
            "--cap-drop",
            "all",
            "--cap-add",
            "chown",
            "--security-opt",
            "no-new-privileges",
            &image,
            "cat",
            "/proc/self/limits",
            "/proc/self/status",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        krunbox_tests::limits_row(&stdout, "Max open files"),
        ["1000", "2000"]
    );
    assert_eq!(krunbox_tests::status_mask(&stdout, "CapBnd"), CAP_CHOWN);
    assert_eq!(krunbox_tests::status_mask(&stdout, "CapEff"), CAP_CHOWN);
    assert_eq!(krunbox_tests::status_mask(&stdout, "NoNewPrivs"), 1);

    // -v mounts appear, read-write and read-only.
    let host_dir = tempfile::tempdir().expect("a dir");
    std::fs::write(host_dir.path().join("in.txt"), "from the host\n").expect("write");
    let volume = format!("{}:/data", host_dir.path().display());
    let out = podman.run(
        &k,
        &[
            "run",
            "--rm",
            "-v",
            &volume,
            &image,
            "sh",
            "-c",
            "cat /data/in.txt; echo back > /data/out.txt",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from the host\n");
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("out.txt")).expect("out.txt"),
        "back\n"
    );
    let read_only = format!("{volume}:ro");
    let out = podman.run(
        &k,
        &[
            "run",
            "--rm",
            "-v",
            &read_only,
            &image,
            "touch",
            "/data/nope",
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(!host_dir.path().join("nope").exists());

    // -it: a terminal, through conmon's console socket.
    let out = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!(
            "{} run -it --rm {image} sh -c 'tty; exit 3'",
            shell_words(&podman.command(&k, &[]))
        ))
        .arg("/dev/null")
        .envs(
            podman
                .command(&k, &[])
                .get_envs()
                .filter_map(|(k, v)| Some((k, v?))),
        )
        .output()
        .expect("run script");
    assert!(
        text(&out.stdout).contains("/dev/pts/"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3));

    // A detached container, then `podman rm -f`: nothing is left.
    let out = podman.run(&k, &["run", "-d", &image, "sleep", "300"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let out = podman.run(&k, &["ps", "--format", "{{.ID}} {{.Status}}", "--no-trunc"]);
    assert!(
        text(&out.stdout).contains(&id[..12]),
        "{}",
        text(&out.stdout)
    );
    let out = podman.run(&k, &["rm", "-f", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !monitors_of(k.runtime_dir()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left running: {:?}",
            monitors_of(k.runtime_dir())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = Path::new("/run/krunbox-oci").join(&id);
    assert!(!state.exists(), "{} is left", state.display());
}

/// A command line for `sh -c` from a `Command`'s program and arguments.
fn shell_words(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// containerd of the test's own (its root, state and socket in a temp dir).
struct Containerd {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kbx-ctrd-")
            .tempdir_in("/tmp")
            .expect("a temp dir");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )
        .expect("write the config");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(dir.path().join("containerd.sock"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("containerd.log")).expect("log"))
            .spawn()
            .expect("start containerd");
        let socket = dir.path().join("containerd.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "containerd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, dir }
    }

    fn ctr(&self, k: &Harness, args: &[&str]) -> Output {
        let mut cmd = Command::new("ctr");
        k.pass_environment(&mut cmd);
        cmd.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(args)
            .output()
            .expect("run ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn containerd_runs_a_registry_image_through_krunbox_oci_as_its_runc() {
    let test = "containerd_runs_a_registry_image_through_krunbox_oci_as_its_runc";
    let Some(k) = e2e(test) else { return };
    let found = krunbox_tests::ssh_agent_fixture::on_path("containerd").is_some()
        && krunbox_tests::ssh_agent_fixture::on_path("ctr").is_some();
    if !found || !nix::unistd::geteuid().is_root() {
        let why = "needs containerd and ctr, as root";
        assert!(
            std::env::var("KRUNBOX_REQUIRE_E2E").is_err() || !nix::unistd::geteuid().is_root(),
            "KRUNBOX_REQUIRE_E2E is set but {test} {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let registry = krunbox_image::local_registry::LocalRegistry::start(
        &krunbox_image::local_registry::LocalRegistryOptions::default(),
    )
    .expect("start docker-registry");
    let work = tempfile::tempdir().expect("a temp dir");
    let layout = work.path().join("layout");
    test_image::write_image(&layout);
    let image = format!("{}/oci/img:{}", registry.address(), test_image::TAG);
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(krunbox_image::push::push_layout(
            &layout,
            Some(test_image::TAG),
            &krunbox_image::reference::Reference::parse(&image).expect("a reference"),
            &krunbox_image::auth::Credentials::Anonymous,
        ))
        .expect("push the test image");
    let containerd = Containerd::start();
    let out = containerd.ctr(&k, &["image", "pull", "--plain-http", &image]);
    assert!(out.status.success(), "ctr pull: {}", text(&out.stderr));
    let runtime = work.path().join("krunbox-oci");
    std::os::unix::fs::symlink(krunbox_binary(), &runtime).expect("link krunbox-oci");
    let runtime = runtime.to_str().expect("UTF-8").to_owned();
    let out = containerd.ctr(
        &k,
        &[
            "run",
            "--rm",
            "--snapshotter",
            "native",
            "--runc-binary",
            &runtime,
            &image,
            "kbx-ctr-1",
            "sh",
            "-c",
            "cat /etc/os-release; uname -r; exit 4",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(test_image::OS_RELEASE),
        "{stdout}{}",
        text(&out.stderr)
    );
    let host = host_kernel();
    assert!(
        !stdout.contains(host.trim()),
        "the container saw the host's kernel: {stdout}"
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let out = containerd.ctr(&k, &["containers", "list", "--quiet"]);
    assert_eq!(text(&out.stdout).trim(), "", "a container is left");
}

/// `krunbox oci` with a state root of the test's own.
fn oci(k: &Harness, root: &Path, args: &[&str]) -> Command {
    let mut cmd = k.krunbox(["oci", "--root", root.to_str().expect("UTF-8")]);
    cmd.args(args);
    cmd
}

/// The `state` of container `id`, parsed.
fn oci_state(k: &Harness, root: &Path, id: &str) -> serde_json::Value {
    let out = oci(k, root, &["state", id]).output().expect("run state");
    assert!(out.status.success(), "state {id}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("state is JSON")
}

/// Waits until `check` holds, for at most `limit`.
fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The runtime command line driven by hand as an engine drives it, with no engine: this is
/// also what runs under libkrun in the KVM host, which has no podman or containerd.
#[test]
fn krunbox_oci_takes_a_bundle_through_its_life_as_an_engine_would() {
    let test = "krunbox_oci_takes_a_bundle_through_its_life_as_an_engine_would";
    let Some(k) = e2e(test) else { return };
    let dir = tempfile::Builder::new()
        .prefix("kbx-oci-")
        .tempdir_in("/tmp")
        .expect("a temp dir");
    let root = dir.path().join("state");
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(rootfs.join(sub)).expect("mkdir");
    }
    std::fs::copy(krunbox_tests::busybox(), rootfs.join("bin/busybox")).expect("busybox");
    for applet in ["sh", "cat", "sleep", "grep", "echo", "hostname"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("ln");
    }
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "cwd": "/",
            "env": ["PATH=/bin"],
            "args": ["sh", "-c", "trap 'echo got-usr1; exit 9' USR1; hostname; \
                     grep 'open files' /proc/self/limits; echo ready; \
                     while :; do sleep 0.1; done"],
            "rlimits": [{ "type": "RLIMIT_NOFILE", "soft": 1111, "hard": 2222 }]
        },
        "root": { "path": "rootfs" },
        "hostname": "oci-box"
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).expect("config.json");

    // create: the container exists, its process waits; the pid file names its monitor.
    let output = dir.path().join("stdout");
    let pid_file = dir.path().join("pid");
    let status = oci(
        &k,
        &root,
        &[
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ],
    )
    .stdout(std::fs::File::create(&output).expect("stdout file"))
    .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
    .status()
    .expect("run create");
    let stderr = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    assert!(status.success(), "create: {}", stderr());
    let created = oci_state(&k, &root, "c1");
    assert_eq!(created["status"], "created");
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    assert_eq!(created["pid"].to_string(), pid.trim());
    assert!(std::fs::read_to_string(&output)
        .unwrap_or_default()
        .is_empty());
    // The VM boots at create (so start costs what is left of it): its agent answers while the
    // container is still created and its process has not run.
    let monitor_log = root.join("c1").join("monitor.log");
    until(
        Duration::from_secs(120),
        "the VM did not boot before start",
        || {
            std::fs::read_to_string(&monitor_log)
                .unwrap_or_default()
                .contains("waiting for start")
        },
    );
    assert_eq!(oci_state(&k, &root, "c1")["status"], "created");
    assert!(
        std::fs::read_to_string(&output)
            .unwrap_or_default()
            .is_empty(),
        "the process ran before start"
    );

    // start: returns once the process runs; a second start is refused.
    let out = oci(&k, &root, &["start", "c1"])
        .output()
        .expect("run start");
    assert!(
        out.status.success(),
        "start: {}{}",
        text(&out.stderr),
        stderr()
    );
    assert_eq!(oci_state(&k, &root, "c1")["status"], "running");
    let again = oci(&k, &root, &["start", "c1"])
        .output()
        .expect("run start");
    assert!(!again.status.success(), "a second start was accepted");
    let seen = || std::fs::read_to_string(&output).unwrap_or_default();
    until(
        Duration::from_secs(60),
        "the process never said ready",
        || seen().contains("ready"),
    );
    let said = seen();
    assert!(said.starts_with("oci-box\n"), "the hostname: {said}");
    assert_eq!(
        krunbox_tests::limits_row(&said, "Max open files"),
        ["1111", "2222"]
    );

    // delete refuses a running container; kill reaches the process in the guest.
    let refused = oci(&k, &root, &["delete", "c1"])
        .output()
        .expect("run delete");
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("--force"),
        "{}",
        text(&refused.stderr)
    );
    let out = oci(&k, &root, &["kill", "c1", "USR1"])
        .output()
        .expect("run kill");
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    until(
        Duration::from_secs(60),
        "the container never stopped",
        || oci_state(&k, &root, "c1")["status"] == "stopped",
    );
    assert!(
        seen().contains("got-usr1"),
        "the signal did not reach the process: {}",
        seen()
    );
    assert_eq!(oci_state(&k, &root, "c1")["pid"], 0);
    let out = oci(&k, &root, &["delete", "c1"])
        .output()
        .expect("run delete");
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    assert!(!oci(&k, &root, &["state", "c1"])
        .output()
        .expect("state")
        .status
        .success());

    // A created container whose VM has booted, killed before start: the VM stops, the
    // process never runs.
    std::fs::write(bundle.join("config.json"), config.to_string()).expect("config.json");
    let output3 = dir.path().join("stdout3");
    let status = oci(
        &k,
        &root,
        &["create", "--bundle", bundle.to_str().unwrap(), "c3"],
    )
    .stdout(std::fs::File::create(&output3).expect("stdout file"))
    .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
    .status()
    .expect("run create");
    assert!(status.success(), "create c3: {}", stderr());
    let monitor_log = root.join("c3").join("monitor.log");
    until(Duration::from_secs(120), "c3's VM did not boot", || {
        std::fs::read_to_string(&monitor_log)
            .unwrap_or_default()
            .contains("waiting for start")
    });
    let out = oci(&k, &root, &["kill", "c3", "TERM"])
        .output()
        .expect("run kill");
    assert!(out.status.success(), "kill c3: {}", text(&out.stderr));
    until(Duration::from_secs(60), "c3 never stopped", || {
        oci_state(&k, &root, "c3")["status"] == "stopped"
    });
    assert!(
        std::fs::read_to_string(&output3)
            .unwrap_or_default()
            .is_empty(),
        "c3's process ran without a start"
    );
    let out = oci(&k, &root, &["delete", "c3"])
        .output()
        .expect("run delete");
    assert!(out.status.success(), "delete c3: {}", text(&out.stderr));

    // A config with no process is created; its start fails; delete --force cleans up.
    let bare = serde_json::json!({ "ociVersion": "1.0.2", "root": { "path": "rootfs" } });
    std::fs::write(bundle.join("config.json"), bare.to_string()).expect("config.json");
    let status = oci(
        &k,
        &root,
        &["create", "--bundle", bundle.to_str().unwrap(), "c2"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
    .status()
    .expect("run create");
    assert!(status.success(), "create with no process: {}", stderr());
    let out = oci(&k, &root, &["start", "c2"])
        .output()
        .expect("run start");
    assert!(!out.status.success(), "started a container with no process");
    assert!(
        text(&out.stderr).contains("no process"),
        "{}",
        text(&out.stderr)
    );
    let out = oci(&k, &root, &["delete", "--force", "c2"])
        .output()
        .expect("run delete");
    assert!(
        out.status.success(),
        "delete --force: {}",
        text(&out.stderr)
    );
    until(Duration::from_secs(15), "a monitor is left", || {
        monitors_of(&root).is_empty()
    });
    assert!(!root.join("c2").exists() && !root.join("c1").exists() && !root.join("c3").exists());
    k.assert_nothing_left(Duration::from_secs(15));
}
