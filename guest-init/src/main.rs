//! guest-init: the krunbox agent.
//!
//! - As PID 1 of a krunbox guest (no arguments): mount what the guest needs, load the
//!   initramfs's kernel modules, switch to the virtio-fs root if asked, configure the network
//!   interface if asked, then serve the krunbox protocol on vsock until told to shut down,
//!   and power off.
//! - `guest-init --listen unix:PATH` (or `vsock:PORT`): host mode, serving the same protocol
//!   without touching the system — how tests and benchmarks drive the agent without a VM.

mod agent;
mod exec;
mod files;
mod listener;
mod modules;
mod mounts;
mod network;
mod outgoing;
mod pty;
mod reaper;
mod rootfs;
mod server;
mod signals;
mod spawn;
mod ssh_agent;
mod system;
mod trust;

use std::path::Path;

use crate::listener::Listen;
use krunbox_protocol::boot::GuestBoot;

const USAGE: &str = "usage: guest-init [--listen unix:PATH|vsock:PORT] [--log LEVEL]

Without --listen, guest-init runs as PID 1 of a krunbox guest: it reads its configuration
from the kernel command line (krunbox.port, krunbox.hostname, krunbox.root, krunbox.mounts,
krunbox.overlay, krunbox.net, krunbox.ssh_agent, krunbox.log), mounts the guest's filesystems and serves the krunbox protocol on vsock.
With --listen it serves the protocol on the given socket and changes nothing else
(host mode, for tests and benchmarks).";

/// Status reported when the agent itself fails (no root, no listener, a bug): distinct from
/// a command's statuses, like Docker's 125.
const AGENT_FAILURE_STATUS: i32 = 125;

/// How long a stopping agent waits for its blocking tasks (file I/O, spawn reports).
const RUNTIME_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

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
    agent::note_init_started();
    let args: Vec<String> = std::env::args().collect();
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

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(err) => {
            tracing::error!(%err, "cannot start the async runtime");
            None
        }
    }
}

/// Logs panics through tracing (the console in a guest). A panicking task only ends that
/// task (tokio catches it); the main thread's panics are caught in [`serve_catching_panics`].
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(%info, "guest-init bug: panic");
    }));
}

/// Runs the agent until shutdown; returns the status to report. Never unwinds: for PID 1 an
/// exit without powering off is a kernel panic, which would hide the reason from the host.
fn serve_catching_panics(listen: Listen, pid1: bool, defaults: listener::ExecDefaults) -> i32 {
    let served = std::panic::catch_unwind(move || {
        let runtime = runtime()?;
        let served = runtime.block_on(listener::serve(listen, pid1, &defaults));
        // Dropping a runtime waits for blocking tasks without limit; power-off must not.
        runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
        Some(served)
    });
    match served {
        Ok(Some(Ok(status))) => status,
        Ok(Some(Err(err))) => {
            tracing::error!(%err, "the agent cannot serve");
            AGENT_FAILURE_STATUS
        }
        Ok(None) | Err(_) => AGENT_FAILURE_STATUS,
    }
}

fn host_mode(listen: Listen, options: &Options) {
    init_logging(options.log.as_deref().unwrap_or("info"));
    log_panics();
    system::raise_fd_limit();
    // Orphans of our commands come to us, as they would to PID 1.
    if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(%err, "cannot become a subreaper");
    }
    // The status a Shutdown request or a one-shot exec asked to report.
    let defaults = listener::ExecDefaults::default();
    std::process::exit(serve_catching_panics(listen, false, defaults));
}

fn guest_mode(options: &Options) {
    // /proc first: the configuration is on the kernel command line.
    mounts::mount_proc();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let krunbox_protocol::boot::Parsed {
        boot: config,
        ignored,
    } = GuestBoot::parse(&cmdline);
    init_logging(options.log.as_deref().unwrap_or(&config.log));
    log_panics();
    for ignored in &ignored {
        tracing::warn!(setting = %ignored, "ignored kernel command line setting");
    }
    let loaded = modules::load_all(Path::new(modules::MODULES_DIR));
    if loaded > 0 {
        tracing::debug!(loaded, "kernel modules loaded");
    }
    let ending = |virtiofs_root| {
        if config.libkrun {
            system::Ending::Libkrun { virtiofs_root }
        } else {
            system::Ending::PowerOff
        }
    };
    let mut virtiofs_root = None;
    if let Some(tag) = &config.root_tag {
        if let Err(err) = rootfs::switch_to_virtiofs(tag, config.overlay) {
            // Without its root the guest is useless: say why and stop the VM.
            tracing::error!(%err, "cannot switch to the root filesystem");
            system::shut_down(AGENT_FAILURE_STATUS, ending(None));
        }
    } else if let Some(upper) = config.overlay {
        // Booted straight from the shared root (libkrun): stack the overlay on it in place.
        match rootfs::overlay_current_root(upper) {
            Ok(root) => virtiofs_root = Some(std::os::fd::IntoRawFd::into_raw_fd(root)),
            Err(err) => {
                // Writing into a shared image is worse than not starting.
                tracing::error!(%err, "cannot put a writable overlay on the root");
                system::shut_down(AGENT_FAILURE_STATUS, ending(None));
            }
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
    if let Some(network) = &config.network {
        network::configure(network);
    }
    system::raise_nr_open();
    system::raise_fd_limit();
    let mut ca_bundle = config.ca_bundle.clone();
    if let (Some(port), Some(network)) = (config.trust_port, &config.network) {
        match trust::install(
            network.gateway,
            port,
            ca_bundle.as_deref(),
            config.overlay.is_some(),
        ) {
            Ok(bundle) => ca_bundle = Some(bundle),
            // A secret's hosts then fail verification: the value is never sent.
            Err(err) => tracing::error!(%err, "the sandbox's CA is not trusted"),
        }
    }
    let defaults = listener::ExecDefaults {
        ssh_agent_port: config.ssh_agent_port,
        ca_bundle,
        secrets: config.secrets.clone(),
    };
    let status = serve_catching_panics(Listen::Vsock(config.port), true, defaults);
    system::shut_down(status, ending(virtiofs_root));
}
