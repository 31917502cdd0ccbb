//! The guest network's helper process, `krunbox __net`, which both backends start for a
//! [`Network::User`](super::Network::User) guest: it binds the published ports, listens on a
//! Unix socket for the VMM's end of the guest's virtio-net card (QEMU `-netdev stream`,
//! libkrun `krun_add_net_unixstream`), and runs the [`krunbox_net::Gateway`] on the one
//! connection it accepts until the VMM closes it.
//!
//! It ends with the VMM (the socket closes), with its parent (the QEMU supervisor's
//! `PR_SET_PDEATHSIG`, or with `--lifeline-stdin` the end of its stdin, which the libkrun VMM
//! child holds open until it exits), or on one of `self_spawn::ENDING_SIGNALS`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;

use super::{BackendError, UserNetwork};

/// The MAC address of the guest's card.
pub const GUEST_MAC: [u8; 6] = krunbox_net::config::GUEST_MAC;

/// A MAC address as VMMs and logs write it (`52:54:00:12:34:56`).
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The static configuration guest-init gives a user-network guest's card: the gateway's
/// fixed subnet, with the gateway as default route and resolver.
pub fn guest_network() -> krunbox_protocol::boot::Network {
    use krunbox_net::config::{GATEWAY_IP, GUEST_IP, PREFIX_LEN};
    krunbox_protocol::boot::Network {
        address: GUEST_IP,
        prefix_len: PREFIX_LEN,
        gateway: GATEWAY_IP,
        dns: GATEWAY_IP,
    }
}

/// The values of `network`'s secrets, from this process's environment (the command that boots
/// the VM, or a sandbox's monitor), for [`crate::self_spawn::hand_secrets`].
pub fn secret_values(
    network: &super::Network,
) -> Result<crate::self_spawn::SecretValues, BackendError> {
    let super::Network::User(network) = network else {
        return Ok(Vec::new());
    };
    let secrets = &network.config.secrets;
    let values = krunbox_net::secrets::values(secrets, |name| std::env::var(name).ok())
        .map_err(|e| BackendError::InvalidSpec(e.to_string()))?;
    Ok(secrets
        .iter()
        .map(|s| s.name.clone())
        .zip(values.into_iter().map(zeroize::Zeroizing::new))
        .collect())
}

/// The helper's arguments (after the program): listen on `socket`.
pub fn helper_args(
    socket: &Path,
    network: &UserNetwork,
    lifeline_stdin: bool,
) -> Result<Vec<String>, BackendError> {
    let config = serde_json::to_string(&network.config)
        .map_err(|e| BackendError::InvalidSpec(format!("network configuration: {e}")))?;
    let mut args = vec![
        crate::self_spawn::Job::NET.to_owned(),
        "--socket".into(),
        socket.to_string_lossy().into_owned(),
        "--config".into(),
        config,
    ];
    if let Some(log) = &network.log {
        args.push("--log".into());
        args.push(log.to_string_lossy().into_owned());
        if network.log_format == LogFormat::Json {
            args.push("--log-format".into());
            args.push("json".into());
        }
    }
    if let Some(sandbox) = &network.sandbox {
        args.push("--sandbox".into());
        args.push(sandbox.clone());
    }
    if lifeline_stdin {
        args.push("--lifeline-stdin".into());
    }
    Ok(args)
}

/// `krunbox __net`'s arguments.
#[derive(Debug, clap::Args)]
pub struct HelperArgs {
    /// The Unix socket the VMM connects to.
    #[arg(long)]
    pub socket: PathBuf,
    /// The network's configuration (JSON of `krunbox_net::NetConfig`).
    #[arg(long)]
    pub config: String,
    /// Also append the gateway's decisions to this file.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// How `--log` is written.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The sandbox this network is of (named in JSON records).
    #[arg(long)]
    pub sandbox: Option<String>,
    /// Exit when stdin reaches its end (the parent is gone).
    #[arg(long)]
    pub lifeline_stdin: bool,
}

/// How a network log is written.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of words per decision.
    #[default]
    Text,
    /// One JSON object per decision: timestamp, sandbox, proto, source, destination, name,
    /// decision, rule, message (`krunbox_net::audit`).
    Json,
}

/// Runs the helper; returns its exit status.
pub fn main(args: &HelperArgs) -> i32 {
    init_logging(args.log.as_deref(), args.log_format);
    if let Some(sandbox) = &args.sandbox {
        krunbox_net::audit::set_sandbox(sandbox);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the network's runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => 0,
        Err(message) => {
            tracing::error!("{message}");
            1
        }
    }
}

async fn serve(args: &HelperArgs) -> Result<(), String> {
    let config: krunbox_net::NetConfig = serde_json::from_str(&args.config)
        .map_err(|e| format!("bad network configuration: {e}"))?;
    // Before the socket exists: a secret that cannot be served stops the VM from booting.
    let interceptor = interceptor(&config)?;
    let published = krunbox_net::bind_published(&config)
        .await
        .map_err(|e| e.to_string())?;
    for (listener, port) in &published {
        if let Ok(address) = listener.local_addr() {
            tracing::info!("publishing {address} -> guest port {}", port.guest_port);
        }
    }
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket)
        .map_err(|e| format!("listening on {}: {e}", args.socket.display()))?;
    let lifeline = async {
        if args.lifeline_stdin {
            crate::self_spawn::lifeline_end().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let terminate = crate::self_spawn::ending_signal();
    tokio::pin!(lifeline, terminate);
    let stream = tokio::select! {
        accepted = listener.accept() => accepted
            .map_err(|e| format!("accepting on {}: {e}", args.socket.display()))?
            .0,
        _ = &mut lifeline => return Ok(()),
        _ = &mut terminate => return Ok(()),
    };
    drop(listener);
    tracing::info!("the VMM connected the guest's network card");
    let mut gateway = krunbox_net::Gateway::new(config);
    if let Some(interceptor) = interceptor {
        gateway = gateway.with_interceptor(interceptor);
    }
    tokio::select! {
        result = gateway.run(stream, published) => result.map_err(|e| e.to_string()),
        _ = &mut lifeline => Ok(()),
        _ = &mut terminate => Ok(()),
    }
}

/// The interception of the network's secrets, their values from this process's environment
/// (inherited from the krunbox command that booted the VM); `None` without secrets.
fn interceptor(
    config: &krunbox_net::NetConfig,
) -> Result<Option<std::sync::Arc<krunbox_net::secrets::Interceptor>>, String> {
    if config.secrets.is_empty() {
        return Ok(None);
    }
    let values = krunbox_net::secrets::values(&config.secrets, |name| std::env::var(name).ok())
        .map_err(|e| e.to_string())?;
    #[cfg(feature = "secrets")]
    {
        let interceptor = krunbox_net::secrets::Interceptor::new(config.secrets.clone(), values)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            secrets = config.secrets.len(),
            "TLS to the secrets' hosts is intercepted"
        );
        Ok(Some(std::sync::Arc::new(interceptor)))
    }
    #[cfg(not(feature = "secrets"))]
    {
        drop(values);
        Err(NO_SECRETS_FEATURE.into())
    }
}

/// Why a build without the `secrets` feature refuses `--secret`.
#[cfg(not(feature = "secrets"))]
pub const NO_SECRETS_FEATURE: &str =
    "--secret needs TLS interception, which this build of krunbox lacks (the `secrets` feature)";

/// Logs to stderr (the run directory's `net.log`), and to `--log` too; each is capped at
/// [`MAX_LOG_BYTES`](krunbox_net::log_cap::MAX_LOG_BYTES) (the guest's actions write these
/// lines), after which one line says the log was truncated.
fn init_logging(log: Option<&Path>, format: LogFormat) {
    use krunbox_net::log_cap::{CappedWriter, MAX_LOG_BYTES};
    use std::sync::Mutex;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("KRUNBOX_NET_LOG")
            .unwrap_or_else(|_| "info".into())
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(Mutex::new(CappedWriter::new(
            std::io::stderr(),
            MAX_LOG_BYTES,
        )))
        .with_ansi(false)
        .with_filter(filter());
    let file = log
        .and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        })
        .map(|file| {
            let existing = file.metadata().map(|m| m.len()).unwrap_or(0);
            let capped = Mutex::new(CappedWriter::new(file, MAX_LOG_BYTES).after(existing));
            match format {
                // The message alone: the record's fields say the same again.
                LogFormat::Text => tracing_subscriber::fmt::layer()
                    .with_writer(capped)
                    .with_ansi(false)
                    .fmt_fields(tracing_subscriber::fmt::format::debug_fn(
                        |writer, field, value| {
                            if field.name() == "message" {
                                write!(writer, "{value:?}")
                            } else {
                                Ok(())
                            }
                        },
                    ))
                    .with_filter(filter())
                    .boxed(),
                // The decisions alone, each one object with its fields at the top.
                LogFormat::Json => tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(capped)
                    .with_filter(
                        tracing_subscriber::filter::Targets::new()
                            .with_target("egress", tracing::Level::INFO),
                    )
                    .boxed(),
            }
        });
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
}

/// How long a started helper may take to create its socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_arguments_carry_the_configuration() {
        let mut network = UserNetwork::default();
        network
            .config
            .publish
            .push("8080:80".parse().expect("port"));
        network.log = Some("/tmp/n.log".into());
        let args = helper_args(Path::new("/run/x/net.sock"), &network, true).expect("args");
        assert_eq!(args[0], crate::self_spawn::Job::NET);
        assert_eq!(args[2], "/run/x/net.sock");
        let config: krunbox_net::NetConfig = serde_json::from_str(&args[4]).expect("json");
        assert_eq!(config, network.config);
        assert_eq!(&args[5..], ["--log", "/tmp/n.log", "--lifeline-stdin"]);
        let net = guest_network();
        assert_eq!(
            (net.address, net.prefix_len, net.gateway, net.dns),
            (
                std::net::Ipv4Addr::new(10, 0, 2, 15),
                24,
                std::net::Ipv4Addr::new(10, 0, 2, 2),
                std::net::Ipv4Addr::new(10, 0, 2, 2)
            )
        );
    }
}
