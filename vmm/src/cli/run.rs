//! `krunbox run`: boot a VM, run one command in it, stream its I/O, exit with its status.
//!
//! The VM is ephemeral: it powers off when the command ends, and everything the backend
//! created for it (processes, sockets, run directory) is removed on every exit path, including
//! `kill -9` of krunbox (see `backend::qemu::supervisor`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use krunbox_image::config::RunOverrides;
use krunbox_image::platform::Platform;
use krunbox_image::source::PullPolicy;

use super::net_args::NetArgsError;
use super::session::{self, CommandOptions, SecondInterrupt, Session, SessionError};
use super::ssh_args::SshAgentError;
use super::timings::{RunMarks, Timings, TimingsFormat};
use super::vm_args::VmArgs;
use crate::backend::{self, VmSpec};
use crate::guest::command::GuestCommand;
use crate::guest::rootfs::{ImageError, ImageOptions};

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
    /// The VM: backend, CPUs, memory, shares, SSH agent, network, kernel.
    #[command(flatten)]
    pub vm: VmArgs,
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
    /// Add a supplementary group of the image (name or GID) to COMMAND's user, beyond the
    /// user's own memberships in the image's /etc/group, as docker run --group-add. Repeatable.
    #[arg(long = "group-add", value_name = "GROUP")]
    pub group_add: Vec<String>,
    /// Resource limits (`--ulimit`).
    #[command(flatten)]
    pub limits: crate::cli::session::LimitArgs,
    /// Capabilities and `no_new_privs`.
    #[command(flatten)]
    pub privileges: crate::cli::privileges::PrivilegeArgs,
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
    /// Print on stderr, after the run, where its time went: prepare, VMM start, firmware and
    /// kernel load, kernel init, agent start, first exec, the command, power-off (`json`:
    /// one JSON object of milliseconds).
    #[arg(long, value_enum, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "text")]
    pub timings: Option<TimingsFormat>,
    /// Boot a VM even when a warm pool (`krunbox pool`) has a booted one of these settings.
    #[arg(long)]
    pub no_pool: bool,
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
    /// A file to create once COMMAND runs in the guest (set by `krunbox-oci`, not a flag).
    #[arg(skip)]
    pub started_mark: Option<std::path::PathBuf>,
    /// A FIFO to read one byte from once the guest's agent answers, before COMMAND starts
    /// (set by `krunbox-oci`, whose `start` writes it, so the VM boots at `create`).
    #[arg(skip)]
    pub start_gate: Option<std::path::PathBuf>,
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
    Command(#[from] crate::guest::command::CommandError),
    /// The guest agent binary.
    #[error(transparent)]
    GuestInit(#[from] crate::guest::agent::GuestInitNotFound),
    /// The backend.
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    /// Shared directories.
    #[error(transparent)]
    Shares(#[from] crate::guest::shares::ShareError),
    /// Named volumes.
    #[error(transparent)]
    Volume(#[from] crate::volumes::VolumeError),
    /// `--ssh`.
    #[error(transparent)]
    SshAgent(#[from] SshAgentError),
    /// Network options.
    #[error(transparent)]
    Network(#[from] NetArgsError),
    /// Starting or running the command.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A warm pool.
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    /// A warm pool's VM.
    #[error(transparent)]
    PoolMember(#[from] crate::sandbox::SandboxError),
}

impl From<ImageError> for RunError {
    fn from(err: ImageError) -> Self {
        Self::Image(Box::new(err))
    }
}

/// After a run with `--workspace=review`: says how to review what the guest changed, or
/// removes the copy if it changed nothing.
fn report_review(id: &str) {
    let Ok(store) = crate::review::ReviewStore::new() else {
        return;
    };
    let Ok(review) = store.open(id) else { return };
    match crate::review::changes::changes(&review) {
        Ok(changes) if changes.is_empty() => {
            let _ = store.remove(id);
        }
        Ok(changes) => eprintln!(
            "krunbox: {} change(s) to the workspace are kept for review: `krunbox diff {id}`, \
             then `krunbox accept {id}` or `krunbox reject {id}`",
            changes.len()
        ),
        Err(err) => eprintln!("krunbox: the workspace's copy {id}: {err}"),
    }
}

/// Runs the command; returns krunbox's exit code.
pub fn run(args: RunArgs) -> Result<i32, RunError> {
    let run_started = Instant::now();
    let network = args.vm.net.network()?;
    crate::cli::net_args::refuse_secret_env(&network, &args.env)?;
    // The backend first: a host that cannot run it is the first thing to hear about.
    let backend = backend::select(args.vm.backend_kind(), args.vm.kernel.is_some())?;
    let ssh_agent = args.vm.ssh.resolve()?;
    let options = ImageOptions {
        pull: args.pull.into(),
        platform: args.platform.clone(),
        progress: std::io::stderr().is_terminal(),
    };
    // Held until the VM is gone: the lease keeps rmi/prune away from the image.
    let root = crate::guest::rootfs::prepare(args.vm.image(&args.image).as_deref(), &options)?;
    tracing::debug!(image = %root.name, rootfs = %root.rootfs.display(), overlay = root.overlay, "image ready");
    // The leases are held until the VM is gone: `krunbox volume rm` refuses a volume in use.
    let (shares, volume_leases) = args.vm.shares.resolve_leased()?;
    let review = shares.review.clone();
    let command = GuestCommand::resolve(
        &root,
        &shares,
        RunOverrides {
            entrypoint: args.entrypoint.clone(),
            command: args.command.clone(),
            env: args.env.clone(),
            workdir: args.workdir.clone(),
            user: args.user.clone(),
        },
        &args.group_add,
    )?;
    let guest_init = crate::guest::agent::locate()?;
    let mut spec = VmSpec::new(root.rootfs.clone(), guest_init);
    spec.root_overlay = root.overlay;
    spec.cpus = args.vm.cpus;
    spec.memory_mib = args.vm.memory;
    spec.kernel = args.vm.kernel.clone();
    spec.hostname = args.hostname.clone();
    spec.shares = shares.dirs;
    spec.ssh_agent = ssh_agent;
    spec.ca_bundle = shares.ca_bundle.clone();
    spec.network = network;
    spec.accel = args.vm.accel();
    spec.guest_log_level = std::env::var("KRUNBOX_GUEST_LOG")
        .ok()
        .filter(|l| !l.is_empty());
    if !args.no_pool {
        if let Some(claimed) = crate::pool::claim::claim(&spec, backend.kind())? {
            return run_warm(&args, &command, claimed, run_started);
        }
    }
    let started = Instant::now();
    // A signal while the backend starts the VM must not kill krunbox before it can stop the
    // VM it is starting: note it, and act once `start` returns.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for sig in crate::self_spawn::ENDING_SIGNALS {
        let interrupted = std::sync::Arc::clone(&interrupted);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let registered = unsafe {
            signal_hook::low_level::register(sig, move || {
                interrupted.store(sig as usize, std::sync::atomic::Ordering::SeqCst)
            })
        };
        if let Err(err) = registered {
            tracing::warn!("cannot watch signal {sig} while starting the VM: {err}");
        }
    }
    let mut vm = backend.start(&spec)?;
    let vmm_running = Instant::now();
    tracing::debug!(backend = %backend.kind(), elapsed = ?started.elapsed(), "VM started");
    let sig = interrupted.load(std::sync::atomic::Ordering::SeqCst);
    if sig != 0 {
        eprintln!("krunbox: interrupted while the VM was booting; stopping it");
        let _ = vm.kill();
        drop(vm);
        return Ok(128 + sig as i32);
    }

    let mut options = session_options(&command, &args, true, SecondInterrupt::StopVm);
    // A signal between that check and the session's own handlers is still seen.
    options.early_signal = Some(interrupted);
    let outcome = session::block_on(Session::new(options, vm.as_mut()).run_marked());
    // The VM handle's drop waits for the cleanup.
    drop(vm);
    drop(root);
    drop(volume_leases);
    if let Some(id) = &review {
        report_review(id);
    }
    tracing::debug!(elapsed = ?started.elapsed(), "done");
    let (result, marks) = outcome?;
    if let Some(format) = args.timings {
        let run = RunMarks {
            start: run_started,
            vmm_called: started,
            vmm_running,
            gone: Instant::now(),
        };
        print_timings(&Timings::new(&run, &marks), format);
    }
    Ok(result?)
}

/// The rest of a run in a warm pool's booted VM: the command, attached as `exec` attaches;
/// then the VM is thrown away (its pool's keeper boots another).
fn run_warm(
    args: &RunArgs,
    command: &GuestCommand,
    claimed: crate::pool::claim::Claimed,
    run_started: Instant,
) -> Result<i32, RunError> {
    let claimed_at = Instant::now();
    let attached = crate::sandbox::attach::AttachedVm::new(claimed.member.clone());
    let mut vm = match attached {
        Ok(vm) => vm,
        Err(err) => {
            claimed.finish();
            return Err(err.into());
        }
    };
    // A second Ctrl-C leaves the command; the VM goes with the claim either way.
    let options = session_options(command, args, false, SecondInterrupt::Detach);
    let outcome = session::block_on(Session::new(options, &mut vm).run_marked());
    let pool = claimed.pool.clone();
    claimed.finish();
    let (result, marks) = outcome?;
    if let Some(format) = args.timings {
        let run = RunMarks {
            start: run_started,
            vmm_called: claimed_at,
            vmm_running: claimed_at,
            gone: Instant::now(),
        };
        print_timings(&Timings::warm(&run, &marks, &pool), format);
    }
    Ok(result?)
}

fn print_timings(timings: &Timings, format: TimingsFormat) {
    let rendered = timings.render(format);
    match format {
        TimingsFormat::Text => eprintln!("krunbox: {rendered}"),
        TimingsFormat::Json => eprintln!("{rendered}"),
    }
}

/// The session's options for `command`.
fn session_options(
    command: &GuestCommand,
    args: &RunArgs,
    power_off_on_exit: bool,
    second_interrupt: SecondInterrupt,
) -> CommandOptions {
    CommandOptions {
        command: command.argv.clone(),
        env: command.env.clone(),
        workdir: Some(command.workdir.clone()),
        user: command.user,
        groups: command.groups.clone(),
        groups_asked: !args.group_add.is_empty(),
        early_signal: None,
        tty: args.tty,
        interactive: args.interactive,
        power_off_on_exit,
        last_command: true,
        second_interrupt,
        agent_timeout: Duration::from_secs(args.boot_timeout),
        started_mark: args.started_mark.clone(),
        start_gate: args.start_gate.clone(),
        rlimits: args.limits.ulimits.clone(),
        privileges: args.privileges.privileges(),
    }
}
