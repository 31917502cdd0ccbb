//! guest-init: the krunbox agent.
//!
//! - As PID 1 of a krunbox guest (no arguments): mount what the guest needs, load the
//!   initramfs's kernel modules, switch to the virtio-fs root if asked, then serve the krunbox
//!   protocol on vsock until told to shut down, and power off.
//! - `guest-init --listen unix:PATH` (or `vsock:PORT`): host mode, serving the same protocol
//!   without touching the system — how tests and benchmarks drive the agent without a VM.
//! - `guest-init exec-helper ...`: internal trampoline used to start commands (see helper.rs).

mod agent;
mod config;
mod exec;
mod files;
mod helper;
mod modules;
mod mounts;
mod outgoing;
mod pty;
mod reaper;
mod rootfs;
mod server;
mod spawn;
mod system;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use crate::agent::Agent;
use crate::config::Config;
use crate::reaper::ProcessTable;

const USAGE: &str = "usage: guest-init [--listen unix:PATH|vsock:PORT] [--log LEVEL]

Without --listen, guest-init runs as PID 1 of a krunbox guest: it reads its configuration
from the kernel command line (krunbox.port, krunbox.hostname, krunbox.root, krunbox.mounts,
krunbox.log), mounts the guest's filesystems and serves the krunbox protocol on vsock.
With --listen it serves the protocol on the given socket and changes nothing else
(host mode, for tests and benchmarks).";

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listen {
    Unix(PathBuf),
    Vsock(u32),
}

#[derive(Debug, Default)]
struct Options {
    listen: Option<Listen>,
    log: Option<String>,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--listen" => {
                let value = iter.next().ok_or("--listen needs a value")?;
                options.listen = Some(if let Some(path) = value.strip_prefix("unix:") {
                    Listen::Unix(path.into())
                } else if let Some(port) = value.strip_prefix("vsock:") {
                    Listen::Vsock(
                        port.parse()
                            .map_err(|_| format!("invalid vsock port {port:?}"))?,
                    )
                } else {
                    return Err(format!(
                        "invalid --listen {value:?}: expected unix:PATH or vsock:PORT"
                    ));
                });
            }
            "--log" => options.log = Some(iter.next().ok_or("--log needs a value")?.clone()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The trampoline must stay single-threaded: nothing else may run before it.
    if args.get(1).map(String::as_str) == Some("exec-helper") {
        std::process::exit(helper::run(&args[2..]));
    }
    let options = match parse_options(&args[1..]) {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("guest-init: {message}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if message.is_empty() { 0 } else { 2 });
        }
    };
    match options.listen.clone() {
        Some(listen) => host_mode(listen, &options),
        None => guest_mode(&options),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("guest-init: cannot start the async runtime: {err}");
            std::process::exit(1)
        }
    }
}

fn host_mode(listen: Listen, options: &Options) {
    init_logging(options.log.as_deref().unwrap_or("info"));
    // Orphans of our commands come to us, as they would to PID 1.
    if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(%err, "cannot become a subreaper");
    }
    let status = runtime().block_on(serve(listen, false));
    std::process::exit(if status == 0 { 0 } else { status });
}

fn guest_mode(options: &Options) {
    // /proc first: the configuration is on the kernel command line.
    let _ = std::fs::create_dir_all("/proc");
    let _ = nix::mount::mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let config = Config::from_cmdline(&cmdline);
    init_logging(options.log.as_deref().unwrap_or(&config.log));
    for ignored in &config.ignored {
        tracing::warn!(setting = %ignored, "ignored kernel command line setting");
    }
    let loaded = modules::load_all(Path::new(modules::MODULES_DIR));
    if loaded > 0 {
        tracing::debug!(loaded, "kernel modules loaded");
    }
    if let Some(tag) = &config.root_tag {
        if let Err(err) = rootfs::switch_to_virtiofs(tag) {
            // Without its root the guest is useless: say why and stop the VM.
            tracing::error!(%err, "cannot switch to the root filesystem");
            system::power_off(125);
        }
    }
    mounts::mount_essentials();
    for share in &config.shares {
        if let Err(err) = mounts::mount_share(share) {
            tracing::error!(%err, "shared directory not mounted");
        }
    }
    system::set_hostname(&config.hostname);
    system::loopback_up();
    let status = runtime().block_on(serve(Listen::Vsock(config.port), true));
    system::power_off(status);
}

/// Serves until a shutdown is requested; returns the status to report.
async fn serve(listen: Listen, pid1: bool) -> i32 {
    let table = Arc::new(ProcessTable::default());
    if let Err(err) = reaper::start(table.clone()) {
        tracing::error!(%err, "cannot watch for child exits");
        return 1;
    }
    let (agent, mut shutdown) = Agent::new(table.clone());
    forward_signals(&agent, pid1);
    let accepting = match listen {
        Listen::Unix(path) => tokio::spawn(accept_unix(agent.clone(), path)),
        Listen::Vsock(port) => tokio::spawn(accept_vsock(agent.clone(), port)),
    };
    let status = tokio::select! {
        status = shutdown.recv() => status.unwrap_or(0),
        result = accepting => {
            tracing::error!(?result, "listener stopped");
            1
        }
    };
    table.signal_all(Signal::SIGKILL);
    status
}

/// Forwards termination signals to every running command; in host mode a SIGTERM or SIGINT
/// with nothing running stops the agent.
fn forward_signals(agent: &Arc<Agent>, pid1: bool) {
    let kinds = [
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::quit(), Signal::SIGQUIT),
        (SignalKind::user_defined1(), Signal::SIGUSR1),
        (SignalKind::user_defined2(), Signal::SIGUSR2),
    ];
    for (kind, sig) in kinds {
        let mut stream = match signal(kind) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%err, "cannot handle {sig}");
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let running = agent.table.running();
                tracing::info!(
                    count = running.len(),
                    "forwarding {sig} to running commands"
                );
                if running.is_empty() && !pid1 && matches!(sig, Signal::SIGTERM | Signal::SIGINT) {
                    agent.request_shutdown(0);
                }
                agent.table.signal_all(sig);
            }
        });
    }
}

async fn accept_unix(agent: Arc<Agent>, path: PathBuf) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    tracing::info!(path = %path.display(), "agent listening");
    let mut next = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        next += 1;
        tokio::spawn(server::serve_connection(
            agent.clone(),
            stream,
            format!("unix#{next}"),
        ));
    }
}

async fn accept_vsock(agent: Arc<Agent>, port: u32) -> std::io::Result<()> {
    let listener = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
        tokio_vsock::VMADDR_CID_ANY,
        port,
    ))?;
    tracing::info!(port, "agent listening on vsock");
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(server::serve_connection(
            agent.clone(),
            stream,
            format!("vsock {peer:?}"),
        ));
    }
}
