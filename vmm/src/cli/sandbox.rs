//! `krunbox create/start/exec/stop/rm/ps/inspect/logs/cp/stats`: named sandboxes that keep
//! running between commands (see `crate::sandbox`).

use std::io::Write;
use std::time::Duration;

use krunbox_image::config::{merge_run_config, RunOverrides};
use krunbox_image::user::resolve_user;

use super::run::{split_env, AccelChoice, BackendChoice};
use super::session::{self, CommandOptions, SecondInterrupt, Session, SessionError};
use super::share_args::ShareArgs;
use super::ssh_args::{SshAgentError, SshArgs};
use krunbox_protocol::client::Client;

use crate::backend::VmHandle;
use crate::sandbox::attach::AttachedVm;
use crate::sandbox::copy;
use crate::sandbox::spec::{now, SandboxSpec, ShareSpec};
use crate::sandbox::store::{Sandbox, Store, CONSOLE_FILE};
use crate::sandbox::{lifecycle, name, SandboxError};

/// Why a sandbox command failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxCliError {
    /// Bad input.
    #[error("{0}")]
    Usage(String),
    /// The sandbox.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The image.
    #[error(transparent)]
    Image(Box<crate::image::ImageError>),
    /// The image's defaults and the command line.
    #[error(transparent)]
    Config(#[from] krunbox_image::config::RunConfigError),
    /// Shared directories.
    #[error(transparent)]
    Shares(#[from] crate::shares::ShareError),
    /// `--ssh`.
    #[error(transparent)]
    SshAgent(#[from] SshAgentError),
    /// Network options.
    #[error(transparent)]
    Network(#[from] super::net_args::NetArgsError),
    /// `--user`.
    #[error(transparent)]
    User(#[from] krunbox_image::user::UserError),
    /// `exec`.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// `cp`.
    #[error(transparent)]
    Copy(#[from] crate::sandbox::copy::CopyError),
    /// The sandbox's agent.
    #[error("sandbox {name:?}: {error}")]
    Agent {
        /// Which.
        name: String,
        /// What failed (not a `source`: the message already has it).
        error: krunbox_protocol::client::ClientError,
    },
    /// Some of several sandboxes failed (each was reported).
    #[error("{0} of the sandboxes failed")]
    Some(usize),
}

impl From<crate::image::ImageError> for SandboxCliError {
    fn from(err: crate::image::ImageError) -> Self {
        Self::Image(Box::new(err))
    }
}

/// Create a sandbox: a named micro-VM that `krunbox start` boots and that keeps running
/// between commands (`krunbox exec`, `cp`, `logs`, `stats`) until `krunbox stop`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krunbox create --name agent --workspace --memory 1024\n  krunbox start agent\n  krunbox exec -it agent -- sh\n  krunbox create --name data -v ./data:/data:ro ./rootfs"
)]
pub struct CreateArgs {
    /// The sandbox's name (letters, digits, '_', '.', '-'); generated when not given.
    #[arg(long)]
    pub name: Option<String>,
    /// Which backend runs the VM.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "KRUNBOX_BACKEND")]
    pub backend: BackendChoice,
    /// Set an environment variable for every `exec` (KEY=VALUE; a bare KEY copies the host's),
    /// on top of the image's Env.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Default working directory of `exec` (default: the workspace, else the image's
    /// WorkingDir, else /).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Default user of `exec`: UID, UID:GID, NAME or NAME:GROUP (names from the image's
    /// /etc/passwd). Default: the workspace's owner with --workspace, else the image's User,
    /// else root.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub cpus: u8,
    /// Guest memory in MiB (an upper bound: memory the guest frees goes back to the host
    /// under QEMU, through virtio-balloon free page reporting).
    #[arg(short = 'm', long = "memory", value_name = "MiB", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(128..=65536))]
    pub memory: u32,
    /// Shared directories (-v, --workspace).
    #[command(flatten)]
    pub shares: ShareArgs,
    /// The host's SSH agent (--ssh: the socket $SSH_AUTH_SOCK names now, checked again at
    /// every start).
    #[command(flatten)]
    pub ssh: SshArgs,
    /// The guest's network (--network, -p, --allow-host, --allow-net, ...). Every decision
    /// is also logged in the sandbox (`krunbox logs --network NAME`).
    #[command(flatten)]
    pub net: super::net_args::NetArgs,
    /// Boot this kernel instead of the backend's default (see `krunbox run --help`).
    #[arg(long, value_name = "PATH", env = "KRUNBOX_KERNEL")]
    pub kernel: Option<std::path::PathBuf>,
    /// Hardware acceleration for the QEMU backend.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// Seconds `start` waits for the guest agent.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub boot_timeout: u64,
    /// The guest's hostname (default: the sandbox's name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// The image: a registry reference, an OCI layout or archive, a `docker save` tarball or
    /// a root filesystem directory (default: the built-in image); pulled now if missing.
    /// Store images get a writable overlay in guest memory; a directory is shared writable.
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
}

/// Boot sandboxes; returns once each one's guest agent answers.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Stop sandboxes: the guest is asked to power off; after --time seconds the VM is stopped
/// hard.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Seconds to wait for the guest to power off before stopping the VM hard.
    #[arg(short = 't', long = "time", value_name = "SECS", default_value_t = 10)]
    pub time: u64,
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Remove sandboxes (their state, logs and everything their VM left).
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Remove running sandboxes too (their VMs are stopped hard first).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// List sandboxes: name, status (running, created, or exited with the reason), image,
/// resources.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Show every sandbox, not only running ones.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only the names.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Print sandboxes' spec and state as JSON.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The sandboxes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Print a sandbox's guest console: the kernel's and the guest agent's messages (of the
/// running VM, or of the last run).
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Keep printing new output until the sandbox stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print the monitor's log (starting, stopping, exit reasons) instead.
    #[arg(long)]
    pub monitor: bool,
    /// Print the network's log instead: every connection the guest tried, allowed or
    /// denied with the rule or reason, DNS answers, published connections.
    #[arg(long, conflicts_with = "monitor")]
    pub network: bool,
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Run a command in a running sandbox, with its stdout, stderr and exit status as if it ran
/// here (like `krunbox run`, without booting a VM).
///
/// Signals: without -t, Ctrl-C, SIGTERM, SIGHUP and SIGQUIT are forwarded to COMMAND; a
/// second Ctrl-C leaves it (the sandbox keeps running).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krunbox exec agent -- ls -l\n  krunbox exec -it agent -- sh\n  echo hi | krunbox exec agent -- cat"
)]
pub struct ExecArgs {
    /// Keep stdin open even when it is a terminal.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run COMMAND on a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (added to the sandbox's).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory (default: the sandbox's).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as UID, UID:GID, NAME or NAME:GROUP (default: the sandbox's user).
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Copy files or directories between the host and a running sandbox.
///
/// One of SRC and DST is NAME:PATH (PATH in the sandbox, relative to its working directory
/// when not absolute), the other a host path (write `./file:x` for a host file whose name
/// has a colon). Copying onto an existing directory puts the source inside it; permission
/// bits are kept; symlinks and special files are skipped.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krunbox cp ./src agent:/work/src\n  krunbox cp agent:/tmp/report.txt ."
)]
pub struct CpArgs {
    /// What to copy: a host path or NAME:PATH.
    #[arg(value_name = "SRC")]
    pub src: String,
    /// Where to: NAME:PATH or a host path.
    #[arg(value_name = "DST")]
    pub dst: String,
}

/// One side of `cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Host(std::path::PathBuf),
    Guest { name: String, path: String },
}

impl Endpoint {
    /// `NAME:PATH` when NAME is a valid sandbox name (so no `/` before the colon).
    fn parse(arg: &str) -> Self {
        match arg.split_once(':') {
            Some((name, path)) if name::validate(name).is_ok() => Self::Guest {
                name: name.to_owned(),
                path: path.to_owned(),
            },
            _ => Self::Host(arg.into()),
        }
    }
}

/// `krunbox cp`.
pub fn cp(args: CpArgs) -> Result<i32, SandboxCliError> {
    let (name, guest_path, to_guest, host) =
        match (Endpoint::parse(&args.src), Endpoint::parse(&args.dst)) {
            (Endpoint::Host(host), Endpoint::Guest { name, path }) => (name, path, true, host),
            (Endpoint::Guest { name, path }, Endpoint::Host(host)) => (name, path, false, host),
            _ => {
                return Err(SandboxCliError::Usage(
                    "cp: exactly one of SRC and DST must be NAME:PATH (a sandbox path)".into(),
                ))
            }
        };
    let sandbox = Store::new()?.open(&name)?;
    let spec = sandbox.spec()?;
    let guest_path = if guest_path.starts_with('/') {
        guest_path
    } else {
        let base = spec.workdir.clone().unwrap_or_else(|| "/".into());
        format!("{}/{guest_path}", base.trim_end_matches('/'))
    };
    let address = AttachedVm::new(sandbox)?.agent_address();
    let agent_error = |error| SandboxCliError::Agent {
        name: name.clone(),
        error,
    };
    let copied = session::block_on(async {
        let client = Client::connect_with_retry(&address, Duration::from_secs(30))
            .await
            .map_err(agent_error)?;
        let copied = if to_guest {
            copy::to_guest(&client, &host, &guest_path).await?
        } else {
            copy::from_guest(&client, &guest_path, &host).await?
        };
        Ok::<_, SandboxCliError>(copied)
    })??;
    tracing::info!(files = copied.files, bytes = copied.bytes, "copied");
    if copied.skipped > 0 {
        eprintln!(
            "krunbox: skipped {} symlinks or special files",
            copied.skipped
        );
    }
    Ok(0)
}

/// Show what running sandboxes cost: CPU, host memory (PSS and RSS of the VM's host
/// processes) and the guest's own view of its memory.
///
/// Host memory: guest RAM is shared between QEMU and its vhost-user helpers, so RSS summed
/// over them counts shared pages once per process; PSS splits them and is what the host
/// spends. CPU is measured over --interval.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print JSON (one object per sandbox, with every process) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Milliseconds over which CPU use is measured.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval: u64,
    /// The sandboxes (default: every running one).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

/// `krunbox stats`.
pub fn stats(args: StatsArgs) -> Result<i32, SandboxCliError> {
    use crate::sandbox::stats;
    let store = Store::new()?;
    let sandboxes: Vec<Sandbox> = if args.names.is_empty() {
        store
            .list()?
            .into_iter()
            .filter(|s| s.monitor_alive().unwrap_or(false))
            .collect()
    } else {
        args.names
            .iter()
            .map(|n| store.open(n))
            .collect::<Result<_, _>>()?
    };
    let proc = std::path::Path::new("/proc");
    let mut rows = Vec::new();
    for sandbox in sandboxes {
        let vm = AttachedVm::new(sandbox.clone())?;
        let pid = sandbox.state()?.map(|s| s.monitor_pid).unwrap_or_default();
        rows.push((sandbox, vm, pid, stats::tree(proc, pid)));
    }
    let interval = Duration::from_millis(args.interval.max(1));
    std::thread::sleep(interval);
    let ticks = stats::ticks_per_second() as f64;
    let mut table = vec![[
        "NAME",
        "CPU %",
        "HOST MEM (PSS)",
        "RSS SUM",
        "PROCS",
        "GUEST MEM USED",
    ]
    .map(String::from)
    .to_vec()];
    let mut json = Vec::new();
    for (sandbox, vm, pid, before) in rows {
        let after = stats::tree(proc, pid);
        let cpu = after.cpu_ticks().saturating_sub(before.cpu_ticks()) as f64
            / ticks
            / interval.as_secs_f64()
            * 100.0;
        let meminfo = guest_file(&vm.agent_address(), "/proc/meminfo");
        let guest = meminfo.as_deref().and_then(stats::guest_memory);
        table.push(vec![
            sandbox.name().to_owned(),
            format!("{cpu:.1}"),
            mib(after.pss_bytes()),
            mib(after.rss_bytes()),
            after.processes.len().to_string(),
            guest
                .map(|(total, available)| {
                    format!("{} / {}", mib(total.saturating_sub(available)), mib(total))
                })
                .unwrap_or_else(|| "-".into()),
        ]);
        json.push(serde_json::json!({
            "name": sandbox.name(),
            "cpu_percent": cpu,
            "host_pss_bytes": after.pss_bytes(),
            "host_rss_bytes": after.rss_bytes(),
            "guest_total_bytes": guest.map(|g| g.0),
            "guest_available_bytes": guest.map(|g| g.1),
            "processes": after.processes,
        }));
    }
    if args.json {
        let text = serde_json::to_string_pretty(&json).map_err(SandboxError::Json)?;
        println!("{text}");
    } else {
        print_table(&mut std::io::stdout().lock(), &table);
    }
    Ok(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A small guest file (e.g. /proc/meminfo) through the agent; `None` if unreachable.
fn guest_file(address: &krunbox_protocol::transport::AgentAddress, path: &str) -> Option<String> {
    session::block_on(async {
        let read = async {
            let client = Client::connect(address).await.ok()?;
            let mut content = Vec::new();
            client.get(path, &mut content).await.ok()?;
            String::from_utf8(content).ok()
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .ok()
            .flatten()
    })
    .ok()
    .flatten()
}

/// `krunbox create`.
pub fn create(args: CreateArgs) -> Result<i32, SandboxCliError> {
    let name = args.name.clone().unwrap_or_else(name::generate);
    name::validate(&name).map_err(SandboxError::from)?;
    let ssh_agent = args.ssh.resolve()?;
    let network = args.net.network()?;
    let options = crate::image::ImageOptions {
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ..Default::default()
    };
    // Pulled (or imported) now, so `start` finds it in the store.
    let root = crate::image::prepare(args.image.as_deref(), &options)?;
    let shares = args.shares.resolve()?;
    // Docker's rules for Env, WorkingDir and User; `exec` always names its own command.
    let overrides = RunOverrides {
        entrypoint: Some(String::new()),
        command: vec!["sh".into()],
        env: args.env.clone(),
        workdir: args.workdir.clone().or_else(|| shares.workdir.clone()),
        user: args
            .user
            .clone()
            .or_else(|| shares.user.map(|(uid, gid)| format!("{uid}:{gid}"))),
    };
    let mut config = merge_run_config(&root.config, &overrides, |key| std::env::var(key).ok())?;
    let user = resolve_user(&root.rootfs, &config.user)?;
    if !config.env.iter().any(|e| e.starts_with("HOME=")) {
        config.env.push(format!("HOME={}", user.home));
    }
    let spec = SandboxSpec {
        hostname: args.hostname.clone().unwrap_or_else(|| name.clone()),
        name,
        image: args.image.clone(),
        rootfs: root.rootfs.clone(),
        overlay: root.overlay,
        shares: shares.dirs.iter().map(ShareSpec::from).collect(),
        network,
        cpus: args.cpus,
        memory_mib: args.memory,
        env: split_env(&config.env),
        workdir: Some(config.workdir),
        user: (user.uid != 0 || user.gid != 0).then_some((user.uid, user.gid)),
        kernel: args.kernel.clone(),
        backend: match args.backend {
            BackendChoice::Auto => None,
            BackendChoice::Krun => Some("krun".into()),
            BackendChoice::Qemu => Some("qemu".into()),
        },
        accel: match args.accel {
            AccelChoice::Auto => "auto",
            AccelChoice::Tcg => "tcg",
            AccelChoice::Kvm => "kvm",
        }
        .into(),
        boot_timeout_secs: args.boot_timeout,
        created_at: now(),
        ssh_agent,
    };
    let sandbox = Store::new()?.create(&spec)?;
    println!("{}", sandbox.name());
    Ok(0)
}

/// Runs `op` on each named sandbox, reporting failures one by one (like `docker stop a b`).
fn each(
    names: &[String],
    mut op: impl FnMut(Sandbox) -> Result<(), SandboxError>,
) -> Result<i32, SandboxCliError> {
    let store = Store::new()?;
    if let [name] = names {
        store.open(name).and_then(op)?;
        return Ok(0);
    }
    let mut failed = 0;
    for name in names {
        if let Err(err) = store.open(name).and_then(&mut op) {
            eprintln!("krunbox: {err}");
            failed += 1;
        }
    }
    match failed {
        0 => Ok(0),
        n => Err(SandboxCliError::Some(n)),
    }
}

/// `krunbox start`.
pub fn start(args: StartArgs) -> Result<i32, SandboxCliError> {
    each(&args.names, |sandbox| {
        match lifecycle::start(&sandbox)? {
            Some(boot_ms) => tracing::info!(name = sandbox.name(), boot_ms, "started"),
            None => tracing::info!(name = sandbox.name(), "already running"),
        }
        println!("{}", sandbox.name());
        Ok(())
    })
}

/// `krunbox stop`.
pub fn stop(args: StopArgs) -> Result<i32, SandboxCliError> {
    let grace = Duration::from_secs(args.time);
    each(&args.names, |sandbox| {
        lifecycle::stop(&sandbox, grace)?;
        println!("{}", sandbox.name());
        Ok(())
    })
}

/// `krunbox rm`.
pub fn rm(args: RmArgs) -> Result<i32, SandboxCliError> {
    each(&args.names, |sandbox| {
        let name = sandbox.name().to_owned();
        lifecycle::remove(sandbox, args.force)?;
        println!("{name}");
        Ok(())
    })
}

/// `krunbox ps`.
pub fn ps(args: PsArgs) -> Result<i32, SandboxCliError> {
    let mut rows = Vec::new();
    for sandbox in Store::new()?.list()? {
        let status = sandbox.status()?;
        if !args.all && !status.is_running() {
            continue;
        }
        if args.quiet {
            rows.push(vec![sandbox.name().to_owned()]);
            continue;
        }
        let spec = sandbox.spec()?;
        rows.push(vec![
            sandbox.name().to_owned(),
            status.to_string(),
            spec.image.clone().unwrap_or_else(|| "(default)".into()),
            spec.cpus.to_string(),
            format!("{} MiB", spec.memory_mib),
            ago(spec.created_at),
        ]);
    }
    let mut out = std::io::stdout().lock();
    if !args.quiet {
        rows.insert(
            0,
            ["NAME", "STATUS", "IMAGE", "CPUS", "MEMORY", "CREATED"]
                .map(String::from)
                .to_vec(),
        );
    }
    print_table(&mut out, &rows);
    Ok(0)
}

/// Rows as left-aligned columns.
pub fn print_table(out: &mut impl Write, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[c]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn ago(then: u64) -> String {
    let secs = now().saturating_sub(then);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// `krunbox inspect`.
pub fn inspect(args: InspectArgs) -> Result<i32, SandboxCliError> {
    let store = Store::new()?;
    let mut all = Vec::new();
    for name in &args.names {
        let sandbox = store.open(name)?;
        all.push(serde_json::json!({
            "name": sandbox.name(),
            "dir": sandbox.dir(),
            "status": sandbox.status()?,
            "spec": sandbox.spec()?,
            "state": sandbox.state()?,
        }));
    }
    let text = serde_json::to_string_pretty(&all).map_err(SandboxError::Json)?;
    println!("{text}");
    Ok(0)
}

/// `krunbox logs`.
pub fn logs(args: LogsArgs) -> Result<i32, SandboxCliError> {
    let sandbox = Store::new()?.open(&args.name)?;
    let path = if args.monitor {
        sandbox.file(crate::sandbox::store::MONITOR_LOG_FILE)
    } else if args.network {
        sandbox.file(crate::sandbox::store::NETWORK_LOG_FILE)
    } else {
        match sandbox.state()?.and_then(|s| s.console) {
            Some(live) if sandbox.monitor_alive()? => live,
            _ => sandbox.file(CONSOLE_FILE),
        }
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(SandboxError::Io {
                action: "open",
                path,
                source,
            }
            .into())
        }
    };
    let mut out = std::io::stdout().lock();
    let copy = |file: &mut std::fs::File, out: &mut std::io::StdoutLock<'_>| {
        std::io::copy(file, out).map_err(|source| SandboxError::Io {
            action: "print",
            path: path.clone(),
            source,
        })
    };
    copy(&mut file, &mut out)?;
    if args.follow {
        // The open file stays readable after the run directory goes away.
        while sandbox.monitor_alive()? {
            std::thread::sleep(Duration::from_millis(200));
            copy(&mut file, &mut out)?;
            let _ = out.flush();
        }
        copy(&mut file, &mut out)?;
    }
    Ok(0)
}

/// `-e` arguments as pairs; a bare KEY takes the host's value (skipped when unset).
fn exec_env(args: &[String]) -> Result<Vec<(String, String)>, SandboxCliError> {
    let mut env = Vec::new();
    for arg in args {
        match arg.split_once('=') {
            Some(("", _)) => return Err(SandboxCliError::Usage(format!("-e {arg:?}: empty name"))),
            Some((key, value)) => env.push((key.to_owned(), value.to_owned())),
            None if arg.is_empty() => {
                return Err(SandboxCliError::Usage("-e needs KEY=VALUE".into()))
            }
            None => {
                if let Ok(value) = std::env::var(arg) {
                    env.push((arg.clone(), value));
                }
            }
        }
    }
    Ok(env)
}

/// `krunbox exec`.
pub fn exec(args: ExecArgs) -> Result<i32, SandboxCliError> {
    let sandbox = Store::new()?.open(&args.name)?;
    let spec = sandbox.spec()?;
    let mut env = spec.env.clone();
    let user = match &args.user {
        Some(user) => {
            let user = resolve_user(&spec.rootfs, user)?;
            env.retain(|(key, _)| key != "HOME");
            env.push(("HOME".into(), user.home));
            Some((user.uid, user.gid))
        }
        None => spec.user,
    };
    for (key, value) in exec_env(&args.env)? {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    let mut vm = AttachedVm::new(sandbox)?;
    let options = CommandOptions {
        command: args.command.clone(),
        env,
        workdir: args.workdir.clone().or(spec.workdir.clone()),
        user,
        tty: args.tty,
        interactive: args.interactive,
        power_off_on_exit: false,
        second_interrupt: SecondInterrupt::Detach,
        agent_timeout: Duration::from_secs(30),
    };
    Ok(session::block_on(Session::new(options, &mut vm).run())??)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_endpoints_are_sandbox_paths_only_with_a_valid_name() {
        assert_eq!(
            Endpoint::parse("box:/tmp/a"),
            Endpoint::Guest {
                name: "box".into(),
                path: "/tmp/a".into()
            }
        );
        assert_eq!(Endpoint::parse("./a:b"), Endpoint::Host("./a:b".into()));
        assert_eq!(
            Endpoint::parse("/abs/path"),
            Endpoint::Host("/abs/path".into())
        );
        assert_eq!(Endpoint::parse("plain"), Endpoint::Host("plain".into()));
    }

    #[test]
    fn exec_env_follows_docker() {
        std::env::set_var("KRUNBOX_EXEC_TEST_VAR", "host");
        let env = exec_env(&[
            "A=1".into(),
            "B=x=y".into(),
            "KRUNBOX_EXEC_TEST_VAR".into(),
            "KRUNBOX_EXEC_UNSET".into(),
        ])
        .unwrap();
        assert_eq!(
            env,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".into(), "x=y".into()),
                ("KRUNBOX_EXEC_TEST_VAR".into(), "host".into())
            ]
        );
        assert!(exec_env(&["=1".into()]).is_err());
    }
}
