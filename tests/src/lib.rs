//! End-to-end tests of krunbox that boot real guests; see `tests/`.
//!
//! This library is the harness the tests share: it finds the `krunbox` binary and guest-init,
//! checks the prerequisites (skipping loudly when they are missing — or failing, when
//! `KRUNBOX_REQUIRE_E2E=1`, as in CI), gives each test its own runtime directory so leaks can
//! be checked, and limits how many guests boot at once (TCG on a 2-core machine).
//!
//! Prerequisites (installed by scripts/setup.sh): `cargo build -p krunbox` (a plain
//! `cargo test --workspace` builds it), `cargo xtask build-init`, qemu-system-x86_64,
//! virtiofsd, vhost-device-vsock, busybox-static, and the guest kernel
//! (`krunbox kernel fetch`, done here on first use if apt can reach Debian).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Guests booting at once in one test binary.
const MAX_CONCURRENT_GUESTS: usize = 2;

/// A process's output as text (lossy UTF-8), for assertions and their messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The workspace's target directory (from this test binary: target/<profile>/deps/<test>).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("test binary lives in target/<profile>/deps")
}

/// `target/<profile>/krunbox`, next to this test binary's profile.
pub fn krunbox_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("krunbox"))
        .expect("test binary lives in target/<profile>/deps")
}

fn guest_init() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KRUNBOX_GUEST_INIT") {
        return Some(PathBuf::from(path));
    }
    let target = target_dir();
    [
        target.join("guest-init/x86_64/guest-init"),
        target.join("x86_64-unknown-linux-musl/release/guest-init"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn on_path(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).exists();
    }
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.iter().any(|d| d.join(program).exists())
}

fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !krunbox_binary().is_file() {
        missing.push(format!(
            "{} (run `cargo build -p krunbox`)",
            krunbox_binary().display()
        ));
    }
    if guest_init().is_none() {
        missing.push("guest-init for x86_64 musl (run `cargo xtask build-init`)".into());
    }
    for program in ["qemu-system-x86_64", "vhost-device-vsock", "busybox"] {
        if !on_path(program) {
            missing.push(program.into());
        }
    }
    // The Rust virtiofsd (QEMU's C one at /usr/lib/qemu/virtiofsd is not enough).
    if !Path::new("/usr/libexec/virtiofsd").exists() && !on_path("virtiofsd") {
        missing.push("virtiofsd (cargo install --locked virtiofsd)".into());
    }
    missing
}

/// The shared prerequisites check and kernel preparation, once per test binary.
fn ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let missing = missing_prerequisites();
            if !missing.is_empty() {
                return Err(format!("missing {missing:?}"));
            }
            let out = Command::new(krunbox_binary())
                .args(["kernel", "fetch"])
                .output()
                .map_err(|e| format!("cannot run krunbox: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`krunbox kernel fetch` failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        })
        .clone()
}

/// A test's view of krunbox; `None` (after a loud SKIPPED line) when the host cannot boot
/// guests and `KRUNBOX_REQUIRE_E2E` is not set.
pub fn e2e(test: &str) -> Option<Harness> {
    match ready() {
        Ok(()) => Some(Harness::new()),
        Err(why) => {
            assert!(
                std::env::var("KRUNBOX_REQUIRE_E2E").is_err(),
                "KRUNBOX_REQUIRE_E2E is set but the end-to-end prerequisites are not met: {why}"
            );
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// krunbox's own guest kernel, as `cargo xtask build-kernel` left it.
pub struct BuiltKernel {
    /// The bzImage to pass to `krunbox run --kernel`.
    pub image: PathBuf,
    /// The ELF vmlinux (PVH entry; libkrun's ELF format).
    pub vmlinux: PathBuf,
    /// Its `uname -r`.
    pub release: String,
}

/// The x86_64 kernel built by `cargo xtask build-kernel` (`$KRUNBOX_CACHE_DIR`, else the
/// workspace's `.krunbox-cache/`, then `kernel/x86_64/`); `None` after a loud SKIPPED line
/// when there is none, or a failure when `KRUNBOX_REQUIRE_E2E` is set (CI builds it first).
pub fn built_kernel(test: &str) -> Option<BuiltKernel> {
    let cache = std::env::var_os("KRUNBOX_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(|root| root.join(".krunbox-cache"))
                .expect("the tests crate lives in the workspace")
        });
    let dir = cache.join("kernel/x86_64");
    let image = dir.join("bzImage");
    match std::fs::read_to_string(dir.join("release")) {
        Ok(release) if image.is_file() && dir.join("vmlinux").is_file() => Some(BuiltKernel {
            image,
            vmlinux: dir.join("vmlinux"),
            release: release.trim().to_owned(),
        }),
        _ => {
            let why = format!(
                "no built kernel in {} (run `cargo xtask build-kernel`)",
                dir.display()
            );
            assert!(
                std::env::var("KRUNBOX_REQUIRE_E2E").is_err(),
                "KRUNBOX_REQUIRE_E2E is set but {why}"
            );
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// Counts booting/running guests in this test binary.
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

fn slots() -> &'static Slots {
    static SLOTS: OnceLock<Slots> = OnceLock::new();
    SLOTS.get_or_init(|| Slots {
        used: Mutex::new(0),
        freed: Condvar::new(),
    })
}

/// One guest slot, released on drop.
pub struct Slot(());

impl Slot {
    fn take() -> Self {
        let slots = slots();
        let mut used = slots.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= MAX_CONCURRENT_GUESTS {
            used = slots.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += 1;
        Slot(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = slots();
        *slots.used.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        slots.freed.notify_one();
    }
}

/// krunbox with a private runtime directory.
pub struct Harness {
    runtime: tempfile::TempDir,
    data_dir: Option<PathBuf>,
    _slot: Slot,
}

impl Harness {
    fn new() -> Self {
        let slot = Slot::take();
        // Short path: Unix socket paths must stay under 108 bytes.
        let runtime = tempfile::Builder::new()
            .prefix("kbx-e2e-")
            // krunbox refuses a runtime root others can reach.
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in("/tmp")
            .expect("runtime dir");
        Self {
            runtime,
            data_dir: None,
            _slot: slot,
        }
    }

    /// Makes every later [`Self::krunbox`] command use `dir` as its data directory.
    pub fn use_data_dir(&mut self, dir: &Path) {
        self.data_dir = Some(dir.to_owned());
    }

    /// This test's runtime directory (holds the run directory of each of its VMs).
    pub fn runtime_dir(&self) -> &Path {
        self.runtime.path()
    }

    /// `krunbox ARGS` with this test's runtime directory and the backend of [`backend`].
    pub fn krunbox<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(krunbox_binary());
        cmd.args(args)
            .env("KRUNBOX_RUNTIME_DIR", self.runtime.path())
            .env("KRUNBOX_BACKEND", backend())
            .env_remove("KRUNBOX_LOG");
        if let Some(dir) = &self.data_dir {
            cmd.env("KRUNBOX_DATA_DIR", dir);
        }
        if let Some(init) = guest_init() {
            cmd.env("KRUNBOX_GUEST_INIT", init);
        }
        cmd
    }

    /// Gives `cmd` this test's krunbox environment (what [`Self::krunbox`] sets), for a
    /// program that runs krunbox itself: an SDK, an engine that runs `krunbox-oci`.
    pub fn pass_environment(&self, cmd: &mut Command) {
        let reference = self.krunbox(std::iter::empty::<&str>());
        for (key, value) in reference.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
    }

    /// A data directory of the test's own (so its image store starts empty and is removed
    /// afterwards) that shares the prepared guest kernel with the user's data directory.
    pub fn private_data_dir(&self) -> tempfile::TempDir {
        private_data_dir()
    }

    /// Runs `krunbox run ARGS` with `stdin` and waits.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        output_with_stdin(
            &mut self.krunbox(std::iter::once("run").chain(args.iter().copied())),
            stdin,
        )
    }

    /// Asserts that nothing of this test's VMs is left: no run directory, no process whose
    /// command line names the runtime directory.
    pub fn assert_nothing_left(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let dirs = self.leftover_dirs();
            let procs = processes_mentioning(self.runtime.path());
            if dirs.is_empty() && procs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind after {within:?}: run dirs {dirs:?}, processes {procs:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn leftover_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.runtime.path())
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

/// The data directory krunbox uses without `KRUNBOX_DATA_DIR` overrides in the test (the
/// same rule as `krunbox`'s paths: `$KRUNBOX_DATA_DIR`, `$XDG_DATA_HOME/krunbox`,
/// `~/.local/share/krunbox`).
pub fn user_data_dir() -> PathBuf {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("KRUNBOX_DATA_DIR")
        .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("krunbox")))
        .or_else(|| env("HOME").map(|h| h.join(".local/share/krunbox")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent-krunbox-data"))
}

/// A private krunbox data directory (its own sandboxes and image store) that shares the
/// prepared guest kernel of [`user_data_dir`] through a symlink, so a test sees only its own
/// sandboxes without downloading the kernel again.
pub fn private_data_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kbx-data-")
        .tempdir()
        .expect("data dir");
    std::os::unix::fs::symlink(user_data_dir().join("kernels"), dir.path().join("kernels"))
        .expect("link the shared kernels");
    dir
}

/// A private data directory whose only kernel is the user's prepared Debian kernel (no
/// krunbox kernel installed, so the QEMU backend falls back to Debian's), and that kernel's
/// ABI (its `uname -r`).
pub fn debian_kernel_data_dir() -> (tempfile::TempDir, String) {
    let user_kernels = user_data_dir().join("kernels");
    let abi = std::fs::read_to_string(user_kernels.join("current"))
        .expect("a prepared Debian kernel (the harness fetches it)")
        .trim()
        .to_owned();
    let data = tempfile::Builder::new()
        .prefix("kbx-data-")
        .tempdir()
        .expect("data dir");
    let kernels = data.path().join("kernels");
    std::fs::create_dir(&kernels).expect("kernels dir");
    std::os::unix::fs::symlink(user_kernels.join(&abi), kernels.join(&abi))
        .expect("link the Debian kernel");
    std::fs::write(kernels.join("current"), &abi).expect("write current");
    (data, abi)
}

/// `pid: cmdline` of every process whose command line mentions `needle`.
pub fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let procs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name != me && name.chars().all(|c| c.is_ascii_digit())
        })
        .map(|e| e.path())
        .collect();
    // All at once on one thread; only if that is stuck, each on a thread of its own.
    let (all, wanted) = (procs.clone(), needle.clone());
    let scan = within(PROC_SCAN_LIMIT, move || {
        all.iter()
            .filter_map(|proc| mentioning(proc, &wanted, std::fs::read(proc.join("cmdline")).ok()))
            .collect::<Vec<String>>()
    });
    if let Some(found) = scan {
        return found;
    }
    procs
        .iter()
        .filter_map(|proc| {
            let cmdline = proc.join("cmdline");
            match within(PROC_READ_LIMIT, move || std::fs::read(cmdline).ok()) {
                Some(cmdline) => mentioning(proc, &needle, cmdline),
                // Its memory is locked (a VM process stuck in its exit, say): what it has open
                // still names its directories.
                None => {
                    let files = open_files(proc);
                    files.contains(&needle).then(|| {
                        format!("{}: (command line unreadable) files: {files}", pid_of(proc))
                    })
                }
            }
        })
        .collect()
}

fn pid_of(proc: &Path) -> String {
    proc.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `pid: cmdline` if the process's command line (`None`: gone) mentions `needle`.
fn mentioning(proc: &Path, needle: &str, cmdline: Option<Vec<u8>>) -> Option<String> {
    let cmdline = String::from_utf8_lossy(&cmdline?).replace('\0', " ");
    cmdline
        .contains(needle)
        .then(|| format!("{}: {cmdline}", pid_of(proc)))
}

/// How long reading every `/proc/PID/cmdline` may take. A read waits for the process's memory
/// lock, which a process stuck in its exit may hold for good: the test would hang with it.
const PROC_SCAN_LIMIT: Duration = Duration::from_secs(5);
/// How long one read may take once a scan was stuck.
const PROC_READ_LIMIT: Duration = Duration::from_secs(2);

/// `work` run on a thread of its own: `None` if it takes longer than `limit` (the thread is
/// left to finish, or to end with the test binary).
fn within<T: Send + 'static>(
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    result.recv_timeout(limit).ok()
}

/// The targets of a process's open file descriptors, space-separated.
fn open_files(proc_dir: &Path) -> String {
    std::fs::read_dir(proc_dir.join("fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .map(|target| target.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Output of a child collected in the background, searchable while it runs.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Starts copying `reader` into a buffer.
    pub fn start(mut reader: impl Read + Send + 'static) -> Self {
        let captured = Self::default();
        let sink = captured.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        captured
    }

    /// Everything so far, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits until the output contains `needle`; panics with the output after `limit`.
    pub fn wait_for(&self, needle: &str, limit: Duration) {
        self.wait_for_beside(needle, limit, None);
    }

    /// [`Self::wait_for`], and a failure shows `other` (the process's stderr) too: why a
    /// command's output never came is usually written there.
    pub fn wait_for_beside(&self, needle: &str, limit: Duration, other: Option<&Captured>) {
        let deadline = Instant::now() + limit;
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} did not appear within {limit:?}; output so far:\n{}\nthe other stream:\n{}",
                self.text(),
                other.map(Captured::text).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A krunbox child that is SIGKILLed if the test ends (or panics) while it runs — which is
/// itself the "parent killed" path that must leave nothing behind.
pub struct Running(pub Child);

impl Running {
    /// Spawns `cmd` with stdin empty and stdout and stderr captured: the child, its stdout and
    /// its stderr.
    pub fn captured(cmd: &mut Command) -> (Self, Captured, Captured) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(Running)
            .expect("spawn");
        let stdout = Captured::start(child.0.stdout.take().expect("stdout"));
        let stderr = Captured::start(child.0.stderr.take().expect("stderr"));
        (child, stdout, stderr)
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// How long one krunbox command of a test may take before the test fails naming it: a hung
/// command would otherwise hold the whole test binary until CI's deadline.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// Runs `cmd` (stdin as it was set, else empty) to its end like [`Command::output`], but fails
/// the test, naming the command and showing what it printed, if it has not exited within
/// `limit` (it is killed), or if something it left behind holds its output open.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    spawn_and_collect(cmd, None, limit)
}

fn spawn_and_collect(cmd: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    let described = format!("{cmd:?}");
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {described}: {e}"));
    if let (Some(mut input), Some(data)) = (child.stdin.take(), stdin) {
        let data = data.to_vec();
        // Not joined: a command that stops reading early ends it with EPIPE when it exits.
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut input, &data);
        });
    }
    let stdout = read_to_end_in_background(child.stdout.take().expect("stdout"));
    let stderr = read_to_end_in_background(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let so_far = |stream: &std::sync::mpsc::Receiver<Vec<u8>>| {
                text(
                    &stream
                        .recv_timeout(Duration::from_secs(1))
                        .unwrap_or_default(),
                )
            };
            panic!(
                "{described} did not exit within {limit:?}; stdout:\n{}\nstderr:\n{}",
                so_far(&stdout),
                so_far(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let rest = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
    let collect = |stream: std::sync::mpsc::Receiver<Vec<u8>>, name: &str| {
        stream.recv_timeout(rest).unwrap_or_else(|_| {
            panic!("{described} exited ({status}) but a process it left holds its {name} open")
        })
    };
    Output {
        status,
        stdout: collect(stdout, "stdout"),
        stderr: collect(stderr, "stderr"),
    }
}

/// Reads `reader` to its end on a thread; the bytes arrive on the channel at EOF.
fn read_to_end_in_background(
    mut reader: impl Read + Send + 'static,
) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (done, bytes) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all);
        let _ = done.send(all);
    });
    bytes
}

/// [`output_within`] ([`COMMAND_LIMIT`]) with `stdin` written to the command's input.
pub fn output_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    spawn_and_collect(cmd, Some(stdin), COMMAND_LIMIT)
}

/// Waits for `child` to exit, at most `limit`.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("krunbox did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub mod ssh_agent_fixture;

/// The host's static busybox (Debian's busybox-static), of which test root filesystems are
/// made.
pub fn busybox() -> PathBuf {
    ssh_agent_fixture::on_path("busybox").expect("busybox (busybox-static)")
}

/// guest-init for x86_64 musl, as the harness finds it (`None` if not built).
pub fn guest_init_binary() -> Option<PathBuf> {
    guest_init()
}

/// Another person on this host: a real local user the tests create, to attack krunbox from
/// outside (or to be its victim, running krunbox as an unprivileged user).
#[derive(Debug, Clone, Copy)]
pub struct LocalUser {
    /// The login name.
    pub name: &'static str,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl LocalUser {
    /// `program` run as this user (no supplementary groups) with an empty environment but for
    /// a standard `PATH`, in `/`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .current_dir("/")
            .uid(self.uid)
            .gid(self.gid);
        cmd
    }

    /// Gives `path` to this user (the test runs as root).
    pub fn chown(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), self.name));
    }
}

/// The local system user `name` (no home directory), created with `useradd` if missing.
/// `None` after a loud SKIPPED line when the tests do not run as root (only root can create
/// users and act as them) — a failure instead when `KRUNBOX_REQUIRE_E2E` is set.
pub fn local_user(test: &str, name: &'static str) -> Option<LocalUser> {
    static CREATING: Mutex<()> = Mutex::new(());
    if !nix::unistd::geteuid().is_root() {
        let why = "needs root to create and act as a second local user";
        assert!(
            std::env::var("KRUNBOX_REQUIRE_E2E").is_err(),
            "KRUNBOX_REQUIRE_E2E is set but {test} {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    // useradd locks /etc/passwd: one at a time.
    let _one = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    let lookup = || nix::unistd::User::from_name(name).expect("read the user database");
    let user = match lookup() {
        Some(user) => user,
        None => {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ])
                .output()
                .expect("run useradd");
            assert!(
                out.status.success(),
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            lookup().unwrap_or_else(|| panic!("useradd made no user {name}"))
        }
    };
    Some(LocalUser {
        name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// The backend the end-to-end tests boot their guests with: `KRUNBOX_TEST_BACKEND`, `qemu`
/// (the default) or `krun`. libkrun needs a KVM that runs ordinary guests, which CI has only
/// inside the KVM host of `cargo xtask kvm-host`, so run a whole test binary there at once:
/// `KRUNBOX_TEST_BACKEND=krun cargo xtask kvm-host -- cargo test -p krunbox-tests --test run`.
pub fn backend() -> &'static str {
    match std::env::var("KRUNBOX_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("qemu") => "qemu",
        Ok("krun") => "krun",
        Ok(other) => panic!("KRUNBOX_TEST_BACKEND={other:?}: expected `qemu` or `krun`"),
    }
}

/// The virtio-fs tag of the guest's root filesystem on [`backend`]: QEMU's `rootfs`
/// (`vmm/src/backend/qemu/plan.rs` `ROOT_TAG`) or libkrun's fixed `/dev/root`
/// (`krun_set_root` / `krun_add_virtiofs3`). Shares are `share1`, `share2`, … on both.
pub fn root_share_tag() -> &'static str {
    match backend() {
        "krun" => "/dev/root",
        _ => "rootfs",
    }
}

/// An HTTP/1.0 server on `address` (from threads, for the process's life) that answers every
/// request with `body`; returns its port.
pub fn http_server(address: std::net::Ipv4Addr, body: &'static str) -> u16 {
    use std::io::Write;
    let listener = std::net::TcpListener::bind((address, 0)).expect("bind a test server");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = [0u8; 2048];
                let _ = stream.read(&mut request);
                let _ = write!(
                    stream,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// A pseudo-terminal for a krunbox child's `-it`: the child gets `slave` as its stdio, the test
/// reads and types through `master`.
pub struct TestPty {
    /// The test's end.
    pub master: std::fs::File,
    /// The child's terminal.
    pub slave: std::fs::File,
}

impl TestPty {
    /// A PTY of `rows` × `cols`, close-on-exec so that no other test's child inherits it.
    pub fn open(rows: u16, cols: u16) -> Self {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .expect("FD_CLOEXEC on the PTY");
        }
        Self {
            master: pty.master.into(),
            slave: pty.slave.into(),
        }
    }

    /// Gives `cmd` the terminal as stdin, stdout and stderr.
    pub fn attach(&self, cmd: &mut Command) {
        let end = || self.slave.try_clone().expect("dup the PTY");
        cmd.stdin(end()).stdout(end()).stderr(end());
    }

    /// Everything the child writes, collected until its terminal closes.
    pub fn capture(&self) -> Captured {
        Captured::start(ReadUntilEio(self.master.try_clone().expect("dup the PTY")))
    }
}

/// A PTY master read to its end: Linux reports the end of the slave side as `EIO`, not EOF.
pub struct ReadUntilEio(pub std::fs::File);

impl Read for ReadUntilEio {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            other => other,
        }
    }
}

/// The hexadecimal mask of a `/proc/PID/status` field (`CapBnd`, `CapEff`, ...).
pub fn status_mask(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no hexadecimal {field} in {status}"))
}

/// The soft and hard limit in the row `row` (`Max open files`) of a `/proc/self/limits`.
pub fn limits_row<'a>(limits: &'a str, row: &str) -> Vec<&'a str> {
    let line = limits
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no {row:?} in {limits}"));
    line[row.len()..].split_whitespace().take(2).collect()
}
