//! `cargo xtask kvm-host -- COMMAND...`: runs COMMAND where the libkrun backend can boot.
//!
//! KVM on the CI machine is `kvm_pvm`, on which ordinary guests die; QEMU's TCG, though,
//! emulates AMD SVM with nested paging. So the harness boots a TCG guest with an AMD CPU
//! model and `+svm,+npt` (the "KVM host"), whose kernel (Debian's cloud kernel, prepared by
//! `krunbox kernel fetch`: [`kernel`]) loads `kvm-amd`; its `/dev/kvm` runs libkrun's guests.
//!
//! The KVM host's root is the machine's own `/`, served read-only by virtiofsd (which itself
//! sees it through a read-only bind mount: [`processes::read_only_root_view`]) under a tmpfs
//! overlay, so COMMAND finds the same binaries, toolchains, images and test binaries without
//! copying, and what it writes is discarded — except in each `--share DIR`, a read-write
//! virtio-fs share at the same path. COMMAND runs chrooted there, in the caller's working
//! directory with the variables [`command::forwarded_env`] picks. A third share, the run's
//! results directory ([`results`]), carries its stdout, stderr (followed live) and exit
//! status back; `init.sh` is the KVM host's PID 1.
//!
//! Everything of a run lives in `target/kvm-host/run-*/` (sockets, logs, the initramfs),
//! removed at the end; a run directory left by a SIGKILLed harness is removed by the next run
//! (its lock is free). The children die with the harness ([`processes`]). Run it under the
//! machine-wide lock (`flock /tmp/krunbox-e2e.lock cargo xtask kvm-host -- ...`): the KVM host
//! is a heavy TCG guest.

mod command;
mod frozen;
mod initramfs;
mod kernel;
mod processes;
mod results;
mod rundir;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::workspace;
use processes::Children;
use results::{Follower, Status};

#[derive(clap::Args)]
pub struct Args {
    /// vCPUs of the KVM host (each a TCG thread). One by default: with two, libkrun's guests
    /// inside triple-faulted now and then (libkrun's `KVM_EXIT_SHUTDOWN` before the guest printed
    /// anything; one boot in ten or so, more when several booted at once), and the test binaries
    /// ran no faster on this 2-core machine (network.rs: 93 s with one, 202 s with two).
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// QEMU's CPU model for the KVM host: TCG emulates AMD's SVM with nested paging
    /// (`+svm,+npt`) but not Intel's VMX.
    #[arg(long, default_value = "EPYC-v3,+svm,+npt")]
    cpu: String,
    /// Memory of the KVM host in MiB (its libkrun guests live in it).
    #[arg(long, default_value_t = 6144)]
    memory: u64,
    /// A directory mounted read-write at its own path (repeatable): what COMMAND writes there
    /// lands on the machine; everything else it writes is discarded.
    #[arg(long = "share", value_name = "DIR")]
    shares: Vec<PathBuf>,
    /// Also forward this environment variable (`NAME`, or `NAME=VALUE`); PATH, HOME,
    /// CARGO_TARGET_DIR, KRUNBOX_* and a few more always are.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// The krunbox binary whose `kernel fetch` prepares the kernel [default:
    /// target/debug/krunbox].
    #[arg(long)]
    krunbox: Option<PathBuf>,
    /// Stop the KVM host and fail when COMMAND has not started after this many seconds.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Stop the KVM host and fail after this many seconds in all.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// Why COMMAND did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum KvmHostError {
    /// A program the harness needs is not there.
    #[error("{0}")]
    Missing(String),
    /// A `--share` is not usable.
    #[error("--share {path}: {why}")]
    Share {
        /// As given.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Preparing the kernel.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// Writing the initramfs.
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    /// A child.
    #[error(transparent)]
    Process(#[from] processes::ProcessError),
    /// The run directory.
    #[error(transparent)]
    RunDir(#[from] rundir::RunDirError),
    /// Forwarding output.
    #[error("forward {what}: {source}")]
    Forward {
        /// stdout or stderr.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The KVM host could not run COMMAND (no svm, no kvm-amd, a mount).
    #[error("the KVM host cannot run the command: {0}")]
    Inside(String),
    /// Too slow.
    #[error("{what} after {limit:?}; stopped the KVM host{details}")]
    Timeout {
        /// What did not happen in time.
        what: &'static str,
        /// The limit.
        limit: Duration,
        /// Console and QEMU log tails.
        details: String,
    },
    /// QEMU ended without a status from the KVM host.
    #[error("QEMU exited ({status}) before the KVM host reported the command's status{details}")]
    NoStatus {
        /// QEMU's exit status.
        status: std::process::ExitStatus,
        /// Console and QEMU log tails.
        details: String,
    },
}

/// How often the harness looks at QEMU and the results.
const POLL: Duration = Duration::from_millis(50);
/// How long a virtiofsd may take to create its socket.
const HELPER_START: Duration = Duration::from_secs(10);

/// Runs the command in a KVM host; returns its exit code.
pub fn run(args: &Args) -> Result<i32, KvmHostError> {
    let started = Instant::now();
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(signal, interrupted.clone())
            .map_err(|e| KvmHostError::Missing(format!("cannot handle signal {signal}: {e}")))?;
    }
    let virtiofsd = virtiofsd()?;
    let krunbox = args
        .krunbox
        .clone()
        .unwrap_or_else(|| workspace::target_dir().join("debug/krunbox"));
    if !krunbox.is_file() {
        return Err(KvmHostError::Missing(format!(
            "{} does not exist: build it first (cargo build -p krunbox)",
            krunbox.display()
        )));
    }
    let shares = shares(&args.shares)?;
    let kernel = kernel::prepare(&krunbox)?;
    let cwd = std::env::current_dir()
        .map_err(|e| KvmHostError::Missing(format!("no working directory: {e}")))?;
    let env = command::forwarded_env(std::env::vars_os(), &args.env);

    // Declared before the children, so it is removed after they are gone.
    let run = rundir::RunDir::create(&workspace::target_dir().join("kvm-host"))?;
    let dir = run.path();
    let initramfs_path = dir.join("initramfs.cpio");
    let share_lines: String = shares
        .iter()
        .enumerate()
        .map(|(i, path)| format!("share{i} {}\n", path.display()))
        .collect();
    initramfs::write(
        &initramfs_path,
        &initramfs::Contents {
            busybox: Path::new(krunbox_image::builtin::DEFAULT_BUSYBOX),
            modules: &kernel.modules,
            command_script: &command::script(&cwd, &env, &args.command),
            shares: &share_lines,
        },
    )?;

    let mut children = Children::default();
    let results = dir.join("results");
    let root_view = dir.join("root");
    for path in [&results, &root_view] {
        std::fs::create_dir(path).map_err(|source| rundir::RunDirError::Io {
            action: "create",
            path: path.clone(),
            source,
        })?;
    }
    let mut devices = Vec::new();
    let mut exports: Vec<(String, &Path)> =
        vec![("root".into(), &root_view), ("results".into(), &results)];
    exports.extend(
        shares
            .iter()
            .enumerate()
            .map(|(i, path)| (format!("share{i}"), path.as_path())),
    );
    for (tag, source) in &exports {
        let socket = dir.join(format!("{tag}.sock"));
        let log = dir.join(format!("virtiofsd-{tag}.log"));
        let mut cmd = Command::new(&virtiofsd);
        // The root is read-only and the machine's files do not change under a run, so the
        // KVM host may cache them (cache=none made each exec of a command several times
        // slower); the results and shares are written from both sides.
        let cache = if tag == "root" { "always" } else { "none" };
        cmd.arg(format!("--socket-path={}", socket.display()))
            .args(["-o", &format!("source={}", source.display())])
            .args(["-o", &format!("cache={cache}"), "-o", "sandbox=chroot"]);
        if tag == "root" {
            processes::read_only_root_view(&mut cmd, source)?;
        }
        redirect(&mut cmd, &log)?;
        let name = format!("virtiofsd ({tag})");
        children.spawn(&name, &mut cmd)?;
        children.wait_for_socket(&name, &socket, &log, HELPER_START)?;
        devices.push((tag.clone(), socket));
    }

    let console = dir.join("console.log");
    let qemu_log = dir.join("qemu.log");
    let monitor = dir.join("monitor.sock");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(qemu_args(
        args,
        &kernel.vmlinuz,
        &initramfs_path,
        &console,
        &devices,
    ))
    .arg("-monitor")
    .arg(format!("unix:{},server=on,wait=off", monitor.display()));
    redirect(&mut qemu, &qemu_log)?;
    children.spawn("qemu", &mut qemu)?;
    let mut frozen = children
        .pid("qemu")
        .map(|pid| frozen::FrozenWatch::new(pid, &monitor));
    let prepared = started.elapsed();
    let qemu_started = Instant::now();
    let logs = Logs {
        console: &console,
        qemu: &qemu_log,
    };

    let mut stdout = Follower::new(&results.join("stdout"));
    let mut stderr = Follower::new(&results.join("stderr"));
    let mut pump = || -> Result<(), KvmHostError> {
        stdout
            .pump(&mut std::io::stdout().lock())
            .map_err(|source| KvmHostError::Forward {
                what: "stdout",
                source,
            })?;
        stderr
            .pump(&mut std::io::stderr().lock())
            .map(drop)
            .map_err(|source| KvmHostError::Forward {
                what: "stderr",
                source,
            })
    };
    let mut booted: Option<Instant> = None;
    let qemu_status = loop {
        pump()?;
        if let Some(status) = children.try_wait("qemu") {
            break status;
        }
        if interrupted.load(Ordering::Relaxed) {
            eprintln!("kvm-host: interrupted; stopping the KVM host");
            return Ok(130);
        }
        if let Some(watch) = frozen.as_mut() {
            watch.check();
        }
        if booted.is_none() && results.join("booted").exists() {
            booted = Some(Instant::now());
            eprintln!(
                "kvm-host: booted in {:.1} s (after {:.1} s to prepare); running the command",
                qemu_started.elapsed().as_secs_f64(),
                prepared.as_secs_f64()
            );
        }
        let (what, limit) = match booted {
            None => ("the command had not started", args.boot_timeout),
            Some(_) => ("the command had not ended", args.timeout),
        };
        let limit = Duration::from_secs(limit);
        if started.elapsed() > limit {
            let processes = booted
                .map(|_| processes_inside(&results))
                .unwrap_or_default();
            return Err(KvmHostError::Timeout {
                what,
                limit,
                details: format!("{}{processes}", logs.tails()),
            });
        }
        std::thread::sleep(POLL);
    };
    pump()?;
    let status = std::fs::read_to_string(results.join("status")).unwrap_or_default();
    match results::parse_status(&status) {
        Some(Status::Exited(code)) => {
            if let Some(booted) = booted {
                eprintln!(
                    "kvm-host: the command exited with {code} after {:.1} s ({:.1} s in all)",
                    booted.elapsed().as_secs_f64(),
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(code)
        }
        Some(Status::Failed(why)) => Err(KvmHostError::Inside(why)),
        None => Err(KvmHostError::NoStatus {
            status: qemu_status,
            details: logs.tails(),
        }),
    }
}

/// How long the KVM host may take to list its processes.
const DUMP_TIMEOUT: Duration = Duration::from_secs(20);

/// The KVM host's processes with their kernel stacks (init.sh writes them when asked), for a
/// command that did not end: where it hangs.
fn processes_inside(results: &Path) -> String {
    let listed = results.join("processes");
    if std::fs::write(results.join("dump-processes"), b"").is_err() {
        return String::new();
    }
    let deadline = Instant::now() + DUMP_TIMEOUT;
    while !listed.exists() && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    match std::fs::read_to_string(&listed) {
        Ok(text) => format!("\n--- KVM host processes (pid comm state ppid pgrp) ---\n{text}"),
        Err(_) => format!("\n--- the KVM host did not list its processes within {DUMP_TIMEOUT:?}"),
    }
}

/// The C virtiofsd of QEMU's packages (the one that runs as root with `sandbox=chroot`).
fn virtiofsd() -> Result<PathBuf, KvmHostError> {
    std::env::var_os("KRUNBOX_VIRTIOFSD")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"].map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            KvmHostError::Missing(
                "no virtiofsd (install qemu-system-common, or set KRUNBOX_VIRTIOFSD)".into(),
            )
        })
}

/// The `--share` directories, absolute and resolved.
fn shares(given: &[PathBuf]) -> Result<Vec<PathBuf>, KvmHostError> {
    given
        .iter()
        .map(|path| {
            let fail = |why: String| KvmHostError::Share {
                path: path.clone(),
                why,
            };
            let resolved = std::fs::canonicalize(path).map_err(|e| fail(e.to_string()))?;
            if !resolved.is_dir() {
                return Err(fail("not a directory".into()));
            }
            if resolved == Path::new("/") || resolved.to_string_lossy().contains('\n') {
                return Err(fail("cannot be / or contain a newline".into()));
            }
            Ok(resolved)
        })
        .collect()
}

fn redirect(cmd: &mut Command, log: &Path) -> Result<(), KvmHostError> {
    let file = std::fs::File::create(log).map_err(|source| rundir::RunDirError::Io {
        action: "create",
        path: log.to_owned(),
        source,
    })?;
    let err = file.try_clone().map_err(|source| rundir::RunDirError::Io {
        action: "open",
        path: log.to_owned(),
        source,
    })?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    Ok(())
}

fn qemu_args(
    args: &Args,
    vmlinuz: &Path,
    initramfs: &Path,
    console: &Path,
    virtiofs: &[(String, PathBuf)],
) -> Vec<String> {
    let mut out: Vec<String> = [
        "-name",
        "krunbox-kvm-host",
        "-accel",
        "tcg,thread=multi",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-append",
        "console=ttyS0 rdinit=/init panic=-1 quiet",
    ]
    .map(String::from)
    .into();
    out.extend([
        "-cpu".into(),
        args.cpu.clone(),
        "-smp".into(),
        args.cpus.to_string(),
        "-m".into(),
        format!("{}M", args.memory),
        // vhost-user devices need the guest's memory shared with their daemons.
        "-machine".into(),
        "q35,memory-backend=mem".into(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={}M,share=on", args.memory),
        "-kernel".into(),
        vmlinuz.display().to_string(),
        "-initrd".into(),
        initramfs.display().to_string(),
        "-serial".into(),
        format!("file:{}", console.display()),
    ]);
    for (tag, socket) in virtiofs {
        out.extend([
            "-chardev".into(),
            format!("socket,id=fs-{tag},path={}", socket.display()),
            "-device".into(),
            format!("vhost-user-fs-pci,chardev=fs-{tag},tag={tag}"),
        ]);
    }
    out
}

/// Where to look when the KVM host fails.
struct Logs<'a> {
    console: &'a Path,
    qemu: &'a Path,
}

impl Logs<'_> {
    /// The last lines of the console and of QEMU's own messages (without TCG's warnings about
    /// CPU features it does not emulate).
    fn tails(&self) -> String {
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("TCG doesn't support requested feature"))
                .collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "\n--- KVM host console (last lines) ---\n{}\n--- QEMU ---\n{}",
            tail(self.console),
            tail(self.qemu)
        )
    }
}
