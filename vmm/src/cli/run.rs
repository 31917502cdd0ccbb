//! `krunbox run`: boot a VM, run one command in it, stream its I/O, exit with its status.
//!
//! The VM is ephemeral: it powers off when the command ends, and everything the backend
//! created for it (processes, sockets, run directory) is removed on every exit path, including
//! `kill -9` of krunbox (see `backend::qemu::supervisor`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use krunbox_protocol::client::{Client, ExecSpec, ExecStdin};
use krunbox_protocol::messages::{ExitStatus, Outcome};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, Signal, SignalKind};

use krunbox_image::config::{merge_run_config, RunConfig, RunConfigError, RunOverrides};
use krunbox_image::platform::Platform;
use krunbox_image::source::PullPolicy;
use krunbox_image::user::{resolve_user, UserError};

use super::terminal;
use crate::backend::{self, log_tail, Accel, BackendKind, VmHandle, VmSpec};
use crate::image::{ImageError, ImageOptions};

/// Console lines shown when the guest fails.
const CONSOLE_TAIL_LINES: usize = 30;
/// How long the guest may take to power off after the command's exit status arrived.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Which backend runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// libkrun where it can boot guests (a working KVM or macOS), QEMU otherwise.
    Auto,
    /// libkrun (KVM / Hypervisor.framework); refused with the reason where it cannot boot
    /// guests (`krunbox doctor` shows it).
    Krun,
    /// QEMU with KVM when usable, else TCG software emulation.
    Qemu,
}

/// When `krunbox run` contacts the registry for IMAGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullChoice {
    /// Pull only when the store has no image by that name.
    Missing,
    /// Pull before every run (blobs already in the store are not downloaded again).
    Always,
    /// Never pull: fail when the image is not in the store.
    Never,
}

impl From<PullChoice> for PullPolicy {
    fn from(choice: PullChoice) -> Self {
        match choice {
            PullChoice::Missing => Self::Missing,
            PullChoice::Always => Self::Always,
            PullChoice::Never => Self::Never,
        }
    }
}

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when it can run standard guests, TCG otherwise (or $KRUNBOX_ACCEL).
    Auto,
    /// Software emulation.
    Tcg,
    /// KVM.
    Kvm,
}

/// Run a command in a new micro-VM.
///
/// IMAGE is a registry reference (`alpine`, `127.0.0.1:5000/app:v1`, `app@sha256:...`;
/// short names resolve as Docker's do), an OCI image layout directory or archive, a
/// `docker save` tarball, or a root filesystem directory; without IMAGE, the built-in
/// default image (busybox). Registry images are pulled into the image store on first use
/// (see --pull) and every image is unpacked there once: each VM sees it through a writable
/// overlay kept in guest memory, so writes never reach the store and vanish with the VM. A
/// root filesystem directory is used as it is, writable.
///
/// The command is the image's Entrypoint followed by COMMAND (or the image's Cmd when no
/// COMMAND is given), with the image's Env, WorkingDir and User, overridden as `docker run`
/// does by -e, -w, -u and --entrypoint.
///
/// The VM boots, runs COMMAND, streams its stdout and stderr to krunbox's, and powers off
/// when it ends; krunbox exits with COMMAND's exit status (128+N if a signal N killed it, 127
/// if it was not found, 126 if it could not be executed). krunbox's own failures (bad
/// arguments, a VM that does not boot) exit with 125.
///
/// Signals: without -t, Ctrl-C (SIGINT), SIGTERM, SIGHUP and SIGQUIT sent to krunbox are
/// forwarded to COMMAND's process group in the guest; a second Ctrl-C stops the VM at once.
/// With -t, Ctrl-C is a key for the guest's terminal like any other.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krunbox run -- uname -a\n  krunbox run alpine -- cat /etc/os-release\n  krunbox run --platform linux/arm64 127.0.0.1:5000/app:v1\n  krunbox run ./image.tar -- sh -c 'echo $HOME'\n  krunbox run ./rootfs -- sh -c 'echo $HOME'\n  echo hi | krunbox run -- cat\n  krunbox run -it -- sh"
)]
pub struct RunArgs {
    /// Which backend runs the VM.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "KRUNBOX_BACKEND")]
    pub backend: BackendChoice,
    /// Set an environment variable in the guest (KEY=VALUE; a bare KEY copies the host's
    /// value), on top of the image's Env.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of COMMAND in the guest (default: the image's WorkingDir, else /).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run COMMAND as this user of the image (name or UID, optionally :GROUP or :GID;
    /// default: the image's User, else root).
    #[arg(short = 'u', long = "user", value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Replace the image's Entrypoint (and drop its Cmd); an empty string clears it.
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,
    /// When to pull IMAGE from its registry.
    #[arg(long, value_enum, default_value_t = PullChoice::Missing)]
    pub pull: PullChoice,
    /// The platform to pick from multi-platform images, as OS/ARCH[/VARIANT]
    /// (default: linux and this host's architecture).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = parse_platform)]
    pub platform: Option<Platform>,
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub cpus: u8,
    /// Guest memory in MiB.
    #[arg(short = 'm', long = "memory", value_name = "MiB", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(128..=65536))]
    pub memory: u32,
    /// Keep stdin open and forward it to COMMAND even when it is a terminal. Without -i,
    /// stdin is forwarded only when it is not a terminal (a pipe or a file), as with ssh.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run COMMAND on a pseudo-terminal (with -i and a host terminal: raw mode, window
    /// resizes follow the host's).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Accepted for Docker compatibility: every `krunbox run` VM is already removed when
    /// COMMAND ends.
    #[arg(long)]
    pub rm: bool,
    /// Boot this kernel instead of the backend's default (QEMU: Debian's cloud kernel plus
    /// modules; libkrun: libkrunfw's). It must have virtio-pci/mmio, vsock and virtio-fs built
    /// in: no module is loaded. `cargo xtask build-kernel` builds one: its `vmlinux` boots on
    /// both backends (QEMU through PVH, libkrun as ELF), its `bzImage` on QEMU. libkrun takes
    /// an ELF vmlinux, a gzip/bzip2/zstd-compressed one or a bzImage with such a payload
    /// (x86_64), an arm64 Image or gzip EFI zboot (aarch64); its guest network (TSI) needs
    /// libkrunfw's kernel patches, so a stock kernel boots without network there.
    #[arg(long, value_name = "PATH", env = "KRUNBOX_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// Hardware acceleration for the QEMU backend.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// Seconds to wait for the guest agent to come up before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub boot_timeout: u64,
    /// The guest's hostname.
    #[arg(long, default_value = "krunbox")]
    pub hostname: String,
    /// The image: a registry reference, an OCI layout or archive, a `docker save` tarball or
    /// a root filesystem directory (default: the built-in image).
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
    /// The command and its arguments, after `--` (default: the image's Cmd).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    Platform::parse(s).map_err(|e| e.to_string())
}

/// Why a run failed (krunbox's failure, not the command's).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The image (boxed: large and rare).
    #[error(transparent)]
    Image(Box<ImageError>),
    /// The image's run defaults and the command line do not make a command.
    #[error(transparent)]
    Config(#[from] RunConfigError),
    /// The user to run as.
    #[error(transparent)]
    User(#[from] UserError),
    /// The guest agent binary.
    #[error(transparent)]
    GuestInit(#[from] crate::guest_init::GuestInitNotFound),
    /// The backend.
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    /// The agent did not answer in time.
    #[error("the guest agent did not come up within {timeout}s ({detail}); last console lines:\n{console}")]
    AgentTimeout {
        /// The boot timeout.
        timeout: u64,
        /// The last connection error.
        detail: String,
        /// The console tail.
        console: String,
    },
    /// The VM ended while booting or while the command ran.
    #[error("the VM stopped {when} ({exit}); last console lines:\n{console}")]
    VmEnded {
        /// During what.
        when: &'static str,
        /// How it ended.
        exit: String,
        /// The console tail (and the VMM's own messages).
        console: String,
    },
    /// The connection to the agent failed.
    #[error("lost the guest agent: {0}")]
    Agent(#[from] krunbox_protocol::client::ClientError),
    /// Local I/O.
    #[error("{0}")]
    Io(String),
}

impl From<ImageError> for RunError {
    fn from(err: ImageError) -> Self {
        Self::Image(Box::new(err))
    }
}

/// Runs the command; returns krunbox's exit code.
pub fn run(args: RunArgs) -> Result<i32, RunError> {
    // The backend first: a host that cannot run it is the first thing to hear about.
    let backend = backend::select(
        match args.backend {
            BackendChoice::Auto => None,
            BackendChoice::Krun => Some(BackendKind::Krun),
            BackendChoice::Qemu => Some(BackendKind::Qemu),
        },
        args.kernel.is_some(),
    )?;
    let options = ImageOptions {
        pull: args.pull.into(),
        platform: args.platform.clone(),
        progress: std::io::stderr().is_terminal(),
    };
    // Held until the VM is gone: the lease keeps rmi/prune away from the image.
    let root = crate::image::prepare(args.image.as_deref(), &options)?;
    tracing::debug!(image = %root.name, rootfs = %root.rootfs.display(), overlay = root.overlay, "image ready");
    let command = GuestCommand::for_image(&args, &root)?;
    let guest_init = crate::guest_init::locate()?;
    let mut spec = VmSpec::new(root.rootfs.clone(), guest_init);
    spec.root_overlay = root.overlay;
    spec.cpus = args.cpus;
    spec.memory_mib = args.memory;
    spec.kernel = args.kernel.clone();
    spec.hostname = args.hostname.clone();
    spec.accel = match args.accel {
        AccelChoice::Auto => Accel::Auto,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Kvm => Accel::Kvm,
    };
    spec.guest_log_level = std::env::var("KRUNBOX_GUEST_LOG")
        .ok()
        .filter(|l| !l.is_empty());
    let started = Instant::now();
    let mut vm = backend.start(&spec)?;
    tracing::debug!(backend = %backend.kind(), elapsed = ?started.elapsed(), "VM started");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RunError::Io(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(Session::new(&args, command, vm.as_mut()).run());
    // Output tasks may still hold stdout; the VM handle's drop waits for the cleanup.
    runtime.shutdown_timeout(Duration::from_millis(200));
    drop(vm);
    drop(root);
    tracing::debug!(elapsed = ?started.elapsed(), "done");
    result
}

/// What runs in the guest: the image's defaults merged with the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GuestCommand {
    config: RunConfig,
    /// uid and gid, when not root.
    user: Option<(u32, u32)>,
}

impl GuestCommand {
    fn for_image(args: &RunArgs, root: &crate::image::PreparedRoot) -> Result<Self, RunError> {
        let overrides = RunOverrides {
            entrypoint: args.entrypoint.clone(),
            command: args.command.clone(),
            env: args.env.clone(),
            workdir: args.workdir.clone(),
            user: args.user.clone(),
        };
        let mut config = merge_run_config(&root.config, &overrides, |key| std::env::var(key).ok())?;
        let user = resolve_user(&root.rootfs, &config.user)?;
        if !config.env.iter().any(|e| e.starts_with("HOME=")) {
            config.env.push(format!("HOME={}", user.home));
        }
        Ok(Self {
            config,
            user: (user.uid != 0 || user.gid != 0).then_some((user.uid, user.gid)),
        })
    }
}

/// The signals krunbox forwards.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    quit: Signal,
}

impl Signals {
    fn install() -> Result<Self, RunError> {
        let on = |kind: SignalKind| {
            signal(kind).map_err(|e| RunError::Io(format!("cannot handle signals: {e}")))
        };
        Ok(Self {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
            quit: on(SignalKind::quit())?,
        })
    }

    /// The next forwarded signal (Linux numbering).
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
            _ = self.quit.recv() => libc::SIGQUIT,
        }
    }
}

struct Session<'a> {
    command: GuestCommand,
    tty: bool,
    forward_stdin: bool,
    boot_timeout: u64,
    vm: &'a mut dyn VmHandle,
}

impl<'a> Session<'a> {
    fn new(args: &RunArgs, command: GuestCommand, vm: &'a mut dyn VmHandle) -> Self {
        Self {
            command,
            tty: args.tty,
            forward_stdin: args.interactive || !std::io::stdin().is_terminal(),
            boot_timeout: args.boot_timeout,
            vm,
        }
    }

    fn console_tail(&self) -> String {
        let mut text = log_tail(&self.vm.console_log(), CONSOLE_TAIL_LINES);
        if text.trim().is_empty() {
            text = "(the console is empty)".into();
        }
        let diagnostics = self.vm.diagnostics();
        if !diagnostics.is_empty() {
            text.push('\n');
            text.push_str(&diagnostics);
        }
        text
    }

    /// Polls the VM until it ends.
    async fn vm_ended(vm: &mut dyn VmHandle) -> String {
        loop {
            match vm.try_wait() {
                Ok(Some(exit)) => return exit.to_string(),
                Ok(None) => {}
                Err(err) => return err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn run(mut self) -> Result<i32, RunError> {
        let mut signals = Signals::install()?;
        let address = self.vm.agent_address();
        let timeout = Duration::from_secs(self.boot_timeout);
        let boot = tokio::select! {
            client = Client::connect_with_retry(&address, timeout) => Boot::Client(client),
            exit = Self::vm_ended(self.vm) => Boot::VmEnded(exit),
            sig = signals.next() => Boot::Signal(sig),
        };
        let client = match boot {
            Boot::Client(Ok(client)) => client,
            Boot::Client(Err(err)) => {
                return Err(RunError::AgentTimeout {
                    timeout: self.boot_timeout,
                    detail: err.to_string(),
                    console: self.console_tail(),
                })
            }
            Boot::VmEnded(exit) => {
                return Err(RunError::VmEnded {
                    when: "before its agent came up",
                    exit,
                    console: self.console_tail(),
                })
            }
            Boot::Signal(sig) => {
                eprintln!("krunbox: interrupted while the VM was booting; stopping it");
                let _ = self.vm.kill();
                return Ok(128 + sig);
            }
        };
        tracing::debug!(agent = ?client.agent_info(), "agent up");
        let status = self.exec(&client, &mut signals).await?;
        // The guest powers off on its own now; give it a moment so writes are flushed.
        let _ = tokio::time::timeout(POWER_OFF_TIMEOUT, Self::vm_ended(self.vm)).await;
        Ok(status)
    }

    fn spec(&self) -> ExecSpec {
        let config = &self.command.config;
        let mut spec = ExecSpec::new(config.argv.clone())
            .power_off_on_exit(true)
            .cwd(config.workdir.clone());
        for entry in &config.env {
            let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
            spec = spec.env(key, value);
        }
        if let Some((uid, gid)) = self.command.user {
            spec = spec.user(uid, gid);
        }
        if self.tty {
            let (rows, cols) = terminal::window_size().unwrap_or((24, 80));
            spec = spec.pty(rows, cols);
            let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
            spec = spec.term(term);
        } else {
            spec = spec.stdin(self.forward_stdin);
        }
        spec
    }

    async fn exec(&mut self, client: &Client, signals: &mut Signals) -> Result<i32, RunError> {
        let mut execution = client.exec(self.spec()).await?;
        let control = execution.control();
        let stdin = execution.take_stdin();
        let (_, mut stdout, mut stderr, exit) = execution.split();
        let raw_mode = if self.tty && self.forward_stdin && std::io::stdin().is_terminal() {
            terminal::RawMode::enable()
                .map_err(|e| tracing::warn!(%e, "cannot put the terminal in raw mode"))
                .ok()
        } else {
            None
        };
        let stdin_task = stdin.map(|stdin| {
            let forward = self.forward_stdin;
            tokio::spawn(forward_stdin(stdin, forward))
        });
        let stdout_task = tokio::spawn(async move {
            let mut out = tokio::io::stdout();
            while let Some(chunk) = stdout.recv().await {
                if out.write_all(&chunk).await.is_err() || out.flush().await.is_err() {
                    break;
                }
            }
        });
        let stderr_task = tokio::spawn(async move {
            let mut err = tokio::io::stderr();
            while let Some(chunk) = stderr.recv().await {
                if err.write_all(&chunk).await.is_err() || err.flush().await.is_err() {
                    break;
                }
            }
        });

        let mut winch = signal(SignalKind::window_change())
            .map_err(|e| RunError::Io(format!("cannot handle SIGWINCH: {e}")))?;
        tokio::pin!(exit);
        let mut interrupts = 0u32;
        let outcome = loop {
            tokio::select! {
                biased;
                status = &mut exit => break Ok(status),
                sig = signals.next() => {
                    if sig == libc::SIGINT && !self.tty {
                        interrupts += 1;
                        if interrupts >= 2 {
                            eprintln!("krunbox: second interrupt; stopping the VM");
                            let _ = self.vm.kill();
                            break Err(128 + libc::SIGINT);
                        }
                    }
                    tracing::debug!(sig, "forwarding a signal to the guest command");
                    if let Err(err) = control.signal(sig).await {
                        tracing::warn!(%err, "cannot forward the signal");
                    }
                }
                _ = winch.recv(), if self.tty => {
                    if let Some((rows, cols)) = terminal::window_size() {
                        let _ = control.resize(rows, cols).await;
                    }
                }
                exit = Self::vm_ended(self.vm) => {
                    drop(raw_mode);
                    return Err(RunError::VmEnded {
                        when: "while the command ran",
                        exit,
                        console: self.console_tail(),
                    });
                }
            }
        };
        let status = match outcome {
            Ok(status) => status,
            Err(code) => {
                drop(raw_mode);
                return Ok(code);
            }
        };
        // All output precedes the exit status; let the writers finish.
        let _ = stdout_task.await;
        let _ = stderr_task.await;
        if let Some(task) = stdin_task {
            task.abort();
        }
        drop(raw_mode);
        match status {
            Ok(status) => Ok(report(&status, &self.command.config.argv)),
            Err(err) => Err(RunError::VmEnded {
                when: "while the command ran",
                exit: err.to_string(),
                console: self.console_tail(),
            }),
        }
    }
}

enum Boot {
    Client(Result<Client, krunbox_protocol::client::ClientError>),
    VmEnded(String),
    Signal(i32),
}

/// Copies krunbox's stdin to the command's; closes it at end of file. When stdin is not
/// forwarded (a terminal without -i), keeps the command's stdin open but silent.
async fn forward_stdin(mut stdin: ExecStdin, forward: bool) {
    if !forward {
        std::future::pending::<()>().await;
    }
    match stdin.send_from(tokio::io::stdin()).await {
        Ok(_) => {
            let _ = stdin.close().await;
        }
        Err(err) => tracing::debug!(%err, "stdin forwarding stopped"),
    }
}

/// The exit code for `status`, explaining start failures on stderr.
fn report(status: &ExitStatus, command: &[String]) -> i32 {
    if let Some(Outcome::SpawnFailed(failure)) = &status.outcome {
        eprintln!(
            "krunbox: cannot run {:?} in the guest: {}",
            command.first().map(String::as_str).unwrap_or_default(),
            failure.message
        );
    }
    if status.timed_out {
        eprintln!("krunbox: the command timed out");
    }
    status.shell_code()
}
