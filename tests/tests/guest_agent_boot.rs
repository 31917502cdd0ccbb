//! Boots a real guest under QEMU TCG with guest-init as PID 1 — without krunbox's backends, so
//! that a failure points at the agent alone — to prove its guest mode against a real kernel: module
//! loading from the initramfs, the switch to a virtio-fs root, the mounts, hostname, the vsock
//! listener, exec over hybrid vsock, and the one-shot power-off; and, in a second guest with
//! QEMU's user-mode network (slirp) standing in for krunbox's host network stack, the static
//! network configuration of `krunbox.net`.
//!
//! Prerequisites (installed by scripts/setup.sh): qemu-system-x86_64, /usr/lib/qemu/virtiofsd,
//! vhost-device-vsock, busybox-static, cpio, apt-get (to download Debian's cloud kernel once,
//! cached under target/), and `cargo xtask build-init`. Without them the test skips loudly,
//! unless KRUNBOX_REQUIRE_E2E=1 (CI), where a missing prerequisite fails it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use krunbox_protocol::client::{Client, ExecSpec};
use krunbox_protocol::messages::Outcome;
use krunbox_protocol::transport::AgentAddress;

/// Modules the cloud kernel needs, in dependency order (checked against modinfo below).
const MODULES: [&str; 13] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "fuse",
    "virtiofs",
    "failover",
    "net_failover",
    "virtio_net",
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).exists().then(|| program.into());
    }
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.exists())
}

/// Returns the missing prerequisites.
fn missing_prerequisites(guest_init: &Path) -> Vec<String> {
    let mut missing: Vec<String> = [
        "qemu-system-x86_64",
        "/usr/lib/qemu/virtiofsd",
        "vhost-device-vsock",
        "cpio",
        "apt-get",
        "dpkg-deb",
        "busybox",
    ]
    .into_iter()
    .filter(|p| which(p).is_none())
    .map(String::from)
    .collect();
    if !guest_init.exists() {
        missing.push(format!(
            "{} (run `cargo xtask build-init`)",
            guest_init.display()
        ));
    }
    missing
}

/// Downloads and unpacks Debian's cloud kernel once; returns (vmlinuz, modules dir).
fn cloud_kernel(cache: &Path) -> (PathBuf, PathBuf) {
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]));
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .expect("apt knows linux-image-cloud-amd64 (run apt-get update)")
        .to_owned();
    let root = cache.join(&package);
    if !root.join("done").exists() {
        std::fs::create_dir_all(&root).expect("kernel cache dir");
        run(Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&root));
        let deb = std::fs::read_dir(&root)
            .expect("read cache")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("downloaded .deb");
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(root.join("x")));
        std::fs::remove_file(&deb).expect("remove .deb");
        std::fs::write(root.join("done"), b"").expect("mark done");
    }
    let boot = root.join("x/boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .expect("boot dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
        })
        .expect("vmlinuz");
    (vmlinuz, root.join("x/lib/modules"))
}

fn find_module(dir: &Path, name: &str) -> PathBuf {
    let wanted = format!("{name}.ko");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)
            .expect("read modules dir")
            .filter_map(Result::ok)
        {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == wanted.as_str()) {
                return path;
            }
        }
    }
    panic!("module {name} not in {}", dir.display());
}

fn build_initramfs(work: &Path, guest_init: &Path, modules: &Path) -> PathBuf {
    let tree = work.join("initramfs");
    std::fs::create_dir_all(tree.join("krunbox/modules")).unwrap();
    for dir in ["dev", "proc", "newroot"] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    let mut loaded: Vec<&str> = Vec::new();
    for (i, name) in MODULES.iter().enumerate() {
        let path = find_module(modules, name);
        let depends = run(Command::new("/sbin/modinfo")
            .args(["-F", "depends"])
            .arg(&path));
        for dep in depends.trim().split(',').filter(|d| !d.is_empty()) {
            assert!(loaded.contains(&dep), "{name} needs {dep} loaded first");
        }
        std::fs::copy(
            &path,
            tree.join(format!("krunbox/modules/{i:02}-{name}.ko")),
        )
        .unwrap();
        loaded.push(name);
    }
    std::fs::copy(guest_init, tree.join("init")).unwrap();
    let image = work.join("initramfs.cpio");
    let list = run(Command::new("find").arg(".").current_dir(&tree));
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&tree)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&image).unwrap())
        .spawn()
        .expect("cpio");
    std::io::Write::write_all(cpio.stdin.as_mut().unwrap(), list.as_bytes()).unwrap();
    drop(cpio.stdin.take());
    assert!(cpio.wait().unwrap().success());
    image
}

fn busybox_rootfs(dir: &Path) {
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "root"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let busybox = which("busybox").expect("busybox");
    std::fs::copy(&busybox, dir.join("bin/busybox")).unwrap();
    for applet in run(Command::new(&busybox).arg("--list")).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        dir.join("etc/os-release"),
        "NAME=\"krunbox test root\"\nID=krunbox-test\n",
    )
    .unwrap();
}

/// Kills what is still running when the test ends, however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} did not create {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A guest booted by [`boot`]; QEMU and its daemons are killed when it is dropped.
struct Guest {
    client: Client,
    qemu: Child,
    console: PathBuf,
    _daemons: Processes,
    _work: tempfile::TempDir,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

impl Guest {
    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Runs `script` with the guest's `sh`; returns its stdout, asserting it succeeded.
    async fn sh(&self, script: &str) -> String {
        let out = self
            .client
            .exec(ExecSpec::new(["sh", "-c", script]))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(
            out.status.outcome,
            Some(Outcome::Code(0)),
            "`{script}` failed: stdout {:?}, stderr {:?}\nconsole:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.console()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// guest-init, or `None` (after a loud SKIPPED line) when a prerequisite is missing and
/// KRUNBOX_REQUIRE_E2E is not set.
fn guest_init_or_skip(test: &str) -> Option<PathBuf> {
    let guest_init = target_dir().join("guest-init/x86_64/guest-init");
    let missing = missing_prerequisites(&guest_init);
    if missing.is_empty() {
        return Some(guest_init);
    }
    assert!(
        std::env::var("KRUNBOX_REQUIRE_E2E").is_err(),
        "KRUNBOX_REQUIRE_E2E=1 but missing: {missing:?}"
    );
    eprintln!("SKIPPED {test}: missing {missing:?}");
    None
}

/// One TCG guest at a time from this file: the tests run in parallel threads, and two
/// emulated guests on a 2-core machine only slow each other down.
static ONE_GUEST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Boots the busybox root with guest-init as PID 1, `append` added to the kernel command
/// line and `qemu_args` to QEMU's; returns once the agent answers.
async fn boot(guest_init: &Path, append: &str, qemu_args: &[&str]) -> Guest {
    let (vmlinuz, modules) = cloud_kernel(&target_dir().join("krunbox-test-kernel"));
    let work = tempfile::tempdir().unwrap();
    let initramfs = build_initramfs(work.path(), guest_init, &modules);
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let (vsock_socket, fs_socket, uds, console) = (
        work.path().join("vsock.sock"),
        work.path().join("fs.sock"),
        work.path().join("vm.vsock"),
        work.path().join("console.log"),
    );

    let mut daemons = Processes(Vec::new());
    daemons.0.push(
        Command::new(which("vhost-device-vsock").unwrap())
            .args(["--guest-cid", "3", "--socket"])
            .arg(&vsock_socket)
            .arg("--uds-path")
            .arg(&uds)
            .stderr(Stdio::null())
            .spawn()
            .expect("vhost-device-vsock"),
    );
    daemons.0.push(
        Command::new("/usr/lib/qemu/virtiofsd")
            .arg(format!("--socket-path={}", fs_socket.display()))
            .args([
                "-o",
                &format!("source={}", rootfs.display()),
                "-o",
                "cache=none",
                "-o",
                "sandbox=chroot",
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("virtiofsd"),
    );
    wait_for(&vsock_socket, "vhost-device-vsock");
    wait_for(&fs_socket, "virtiofsd");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512M"])
        .args([
            "-machine",
            "q35,memory-backend=mem",
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
        ])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial"])
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 rdinit=/init panic=-1 quiet krunbox.root=virtiofs:rootfs {append}"
        ))
        .arg("-chardev")
        .arg(format!("socket,id=vsk,path={}", vsock_socket.display()))
        .args(["-device", "vhost-user-vsock-pci,chardev=vsk", "-chardev"])
        .arg(format!("socket,id=vfs,path={}", fs_socket.display()))
        .args(["-device", "vhost-user-fs-pci,chardev=vfs,tag=rootfs"])
        .args(qemu_args)
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu");

    // Connect only once the agent says it listens, as the QEMU backend does: a connection
    // pending while the guest's driver is still setting up the device ends vhost-device-vsock
    // 0.3.0's worker thread for good (see `krunbox_protocol::AGENT_READY_LINE`).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains(krunbox_protocol::AGENT_READY_LINE)
        && std::time::Instant::now() < deadline
        && qemu.try_wait().ok().flatten().is_none()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let address = AgentAddress::HybridVsock {
        uds: uds.clone(),
        port: 1024,
    };
    let client = match Client::connect_with_retry(&address, Duration::from_secs(60)).await {
        Ok(client) => client,
        Err(err) => {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            let _ = qemu.kill();
            let _ = qemu.wait();
            panic!("agent did not come up: {err}\nconsole:\n{log}");
        }
    };
    Guest {
        client,
        qemu,
        console,
        _daemons: daemons,
        _work: work,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_init_runs_as_pid1_of_a_real_guest() {
    let Some(guest_init) = guest_init_or_skip("guest boot test") else {
        return;
    };
    let _turn = ONE_GUEST_AT_A_TIME.lock().await;
    // A network device but no krunbox.net: the interface must stay unconfigured.
    let mut guest = boot(
        &guest_init,
        "krunbox.hostname=e2e-guest",
        &[
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
    )
    .await;
    let out = guest
        .client
        .exec(ExecSpec::new(["sh", "-c", "cat /proc/1/comm; hostname; . /etc/os-release; echo $ID; mount | grep -c -E ' on /(proc|sys|dev|dev/pts|tmp|run|sys/fs/cgroup) '; echo oops >&2; exit 3"]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["init", "e2e-guest", "krunbox-test", "7"],
        "stdout: {stdout}"
    );
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.status.outcome, Some(Outcome::Code(3)));
    let unconfigured = guest
        .sh("cat /sys/class/net/eth0/flags; ip -4 -o addr show dev eth0; ip -4 route; test -e /etc/resolv.conf || echo no-resolv-conf")
        .await;
    let flags = unconfigured.lines().next().unwrap_or_default();
    let down = u32::from_str_radix(flags.trim_start_matches("0x"), 16).is_ok_and(|f| f & 1 == 0);
    assert!(down, "eth0 without krunbox.net: {unconfigured}");
    assert_eq!(
        unconfigured.lines().skip(1).collect::<Vec<_>>(),
        ["no-resolv-conf"],
        "no address, no route, no resolv.conf without krunbox.net"
    );

    // One-shot: the guest powers off once the exit status is delivered.
    let out = guest
        .client
        .exec(ExecSpec::new(["true"]).power_off_on_exit(true))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(out.status.shell_code(), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = guest.qemu.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "guest did not power off");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "qemu exit {status}");
    let log = guest.console();
    assert!(
        log.contains("krunbox: exit-status 0"),
        "console reports the status:\n{log}"
    );
}

/// Answers one HTTP request on `listener` with `body`; returns the request line.
fn serve_one_request(listener: TcpListener, body: &'static str) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (stream, peer) = listener.accept().expect("the guest connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(&stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        // The rest of the request header, up to the empty line.
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        write!(
            &stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // slirp makes the guest's connection come from the host's loopback.
        assert!(peer.ip().is_loopback(), "connection from {peer}");
        request_line
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn krunbox_net_configures_the_guest_network() {
    let Some(guest_init) = guest_init_or_skip("guest network test") else {
        return;
    };
    // slirp maps the gateway, 10.0.2.2, to the host's loopback.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = serve_one_request(listener, "hello from the host\n");

    let _turn = ONE_GUEST_AT_A_TIME.lock().await;
    let guest = boot(
        &guest_init,
        "krunbox.net=10.0.2.15/24,10.0.2.2,10.0.2.2",
        &[
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
    )
    .await;

    let addresses = guest.sh("ip -4 -o addr show dev eth0").await;
    assert!(
        addresses.contains("inet 10.0.2.15/24 "),
        "eth0 addresses: {addresses}"
    );
    let flags = guest
        .sh("cat /sys/class/net/eth0/flags /sys/class/net/eth0/mtu")
        .await;
    let flags: Vec<&str> = flags.lines().collect();
    let up = flags
        .first()
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 1 != 0);
    assert!(up, "eth0 is not up: {flags:?}");
    assert_eq!(flags.get(1), Some(&"1500"), "eth0 mtu");
    let routes = guest.sh("ip -4 route show default").await;
    assert_eq!(
        routes.trim(),
        "default via 10.0.2.2 dev eth0",
        "routes: {routes}"
    );
    let resolv = guest
        .sh("cat /etc/resolv.conf; grep -c ' /etc/resolv.conf ' /proc/self/mountinfo")
        .await;
    assert_eq!(
        resolv, "nameserver 10.0.2.2\n1\n",
        "resolv.conf, then its mount count"
    );

    // `timeout`, not wget's -T: Debian's static busybox 1.35 wget crashes (SIGSEGV) with -T.
    let body = guest
        .sh(&format!(
            "timeout 60 wget -q -O - http://10.0.2.2:{port}/from-the-guest"
        ))
        .await;
    assert_eq!(body, "hello from the host\n");
    let request_line = server.join().expect("the host server");
    assert!(
        request_line.starts_with("GET /from-the-guest HTTP/1."),
        "request: {request_line:?}"
    );
    let console = guest.console();
    assert!(
        console.contains("network configured"),
        "guest-init logs the configuration:\n{console}"
    );
}
