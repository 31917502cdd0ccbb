//! `/v1/sandboxes`: create (and start), list, inspect, start, stop, pause, resume, remove,
//! stats and logs. Each is the CLI command of the same name: a create request is turned into
//! `krunbox create`'s own arguments, so the API accepts exactly what the CLI accepts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use clap::Parser;
use serde::Deserialize;

use super::error::{blocking, ApiError, JsonBody, Params};
use crate::cli::sandbox::{create_sandbox, described, measure, CreateArgs};
use crate::sandbox::lifecycle;
use crate::sandbox::store::{Sandbox, Store, CONSOLE_FILE, MONITOR_LOG_FILE, NETWORK_LOG_FILE};

/// `POST /v1/sandboxes`: what `krunbox create` takes, as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// `--name` (generated when absent).
    pub name: Option<String>,
    /// IMAGE (absent: the built-in image).
    pub image: Option<String>,
    /// `--profile`.
    pub profile: Option<String>,
    /// `--cpus`.
    pub cpus: Option<u8>,
    /// `--memory`, MiB.
    pub memory_mib: Option<u32>,
    /// `--workspace`, of this host directory instead of the current one.
    pub workspace: Option<PathBuf>,
    /// `share` (default: the directory itself) or `review` (`--workspace=review`: a copy, its
    /// changes accepted or rejected through `/changes`, `/accept`, `/reject`).
    pub workspace_mode: Option<String>,
    /// `-v HOST:GUEST[:ro]` (a relative HOST is relative to the workspace).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// The network.
    #[serde(default)]
    pub network: NetworkRequest,
    /// `-e KEY=VALUE`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--backend` (`krun`, `qemu`).
    pub backend: Option<String>,
    /// `--ssh`: forward the server's SSH agent.
    #[serde(default)]
    pub ssh: bool,
    /// `--host-ca`.
    #[serde(default)]
    pub host_ca: bool,
    /// `--secret NAME@HOST,…`: each value is taken from `krunbox serve`'s own environment
    /// (never from a request), the guest sees a placeholder.
    #[serde(default)]
    pub secrets: Vec<SecretRequest>,
    /// `--boot-timeout`, seconds.
    pub boot_timeout_secs: Option<u64>,
    /// Boot it now (default), as `krunbox start` would.
    pub start: Option<bool>,
}

/// One secret of [`CreateRequest`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    /// The variable: set to a placeholder in the guest, its value read from the server's
    /// environment.
    pub name: String,
    /// `HOST[:PORT]`s the value may be sent to.
    pub hosts: Vec<String>,
}

/// The network options of [`CreateRequest`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// `--network`: `user` (default), `none`, `tsi`.
    pub mode: Option<String>,
    /// `--allow-host NAME[:PORT]`.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// `--allow-net CIDR[:PORT]`.
    #[serde(default)]
    pub allow_nets: Vec<String>,
    /// `-p [HOST_IP:]HOST_PORT:GUEST_PORT`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// `--add-host NAME:IP`.
    #[serde(default)]
    pub add_hosts: Vec<String>,
}

/// `krunbox create`'s arguments, parsed by its own parser.
#[derive(Debug, Parser)]
#[command(name = "create", args_override_self = true)]
struct CreateCommand {
    #[command(flatten)]
    args: CreateArgs,
}

impl CreateRequest {
    /// The command line `krunbox create` would be given (every value as `--opt=VALUE`, so a
    /// value is never taken for an option).
    pub fn to_argv(&self) -> Result<Vec<String>, ApiError> {
        let mut argv = vec!["create".to_owned()];
        let mut opt = |name: &str, value: &dyn std::fmt::Display| {
            argv.push(format!("--{name}={value}"));
        };
        if let Some(name) = &self.name {
            opt("name", name);
        }
        if let Some(profile) = &self.profile {
            opt("profile", profile);
        }
        if let Some(cpus) = self.cpus {
            opt("cpus", &cpus);
        }
        if let Some(memory) = self.memory_mib {
            opt("memory", &memory);
        }
        for volume in &self.volumes {
            opt("volume", volume);
        }
        if let Some(mode) = &self.network.mode {
            opt("network", mode);
        }
        for host in &self.network.allow_hosts {
            opt("allow-host", host);
        }
        for net in &self.network.allow_nets {
            opt("allow-net", net);
        }
        for port in &self.network.publish {
            opt("publish", port);
        }
        for host in &self.network.add_hosts {
            opt("add-host", host);
        }
        for secret in &self.secrets {
            if secret.hosts.is_empty() || secret.hosts.iter().any(|h| h.contains([',', '@'])) {
                return Err(ApiError::BadRequest(format!(
                    "secrets: {}: give one or more hosts, each HOST[:PORT]",
                    secret.name
                )));
            }
            opt(
                "secret",
                &format!("{}@{}", secret.name, secret.hosts.join(",")),
            );
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') {
                return Err(ApiError::BadRequest(format!(
                    "env: {key:?} is not a variable name"
                )));
            }
            opt("env", &format!("{key}={value}"));
        }
        if let Some(dir) = &self.workdir {
            opt("workdir", dir);
        }
        if let Some(user) = &self.user {
            opt("user", user);
        }
        if let Some(hostname) = &self.hostname {
            opt("hostname", hostname);
        }
        if let Some(backend) = &self.backend {
            opt("backend", backend);
        }
        if let Some(secs) = self.boot_timeout_secs {
            opt("boot-timeout", &secs);
        }
        match (&self.workspace, self.workspace_mode.as_deref()) {
            (Some(_), None | Some("share")) => argv.push("--workspace".into()),
            (Some(_), Some("review")) => argv.push("--workspace=review".into()),
            (Some(_), Some(other)) => {
                return Err(ApiError::BadRequest(format!(
                    "workspace_mode: {other:?} is neither share nor review"
                )))
            }
            (None, Some(_)) => {
                return Err(ApiError::BadRequest(
                    "workspace_mode needs a workspace".into(),
                ))
            }
            (None, None) => {}
        }
        if self.ssh {
            argv.push("--ssh".into());
        }
        if self.host_ca {
            argv.push("--host-ca".into());
        }
        if let Some(image) = &self.image {
            argv.push("--".into());
            argv.push(image.clone());
        }
        Ok(argv)
    }

    /// `krunbox create`'s arguments for this request, profiles expanded as on the CLI.
    fn create_args(&self) -> Result<CreateArgs, ApiError> {
        if let Some(dir) = &self.workspace {
            if !dir.is_absolute() {
                return Err(ApiError::BadRequest(format!(
                    "workspace {}: give an absolute path",
                    dir.display()
                )));
            }
        }
        // `expand` reads a whole command line: the program's name, then `create`.
        let argv = std::iter::once("krunbox".to_owned())
            .chain(self.to_argv()?)
            .map(std::ffi::OsString::from)
            .collect();
        let argv =
            crate::cli::profile::expand(argv).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let mut command = CreateCommand::try_parse_from(&argv[1..])
            .map_err(|e| ApiError::BadRequest(crate::cli::clap_reason(&e)))?;
        let args = &mut command.args;
        if self.workspace.is_none() {
            // Without a workspace there is no directory relative paths could mean: never the
            // server's own current directory.
            if args.vm.shares.workspace.is_some() {
                return Err(ApiError::BadRequest(
                    "the profile asks for --workspace: give the workspace directory".into(),
                ));
            }
            let relative = |path: &str| path.starts_with("./") || path.starts_with("../");
            if let Some(volume) = args.vm.shares.volumes.iter().find(|v| relative(v)) {
                return Err(ApiError::BadRequest(format!(
                    "volume {volume:?}: a relative host path needs a workspace to be relative to"
                )));
            }
            if let Some(image) = args.image.as_deref().filter(|i| relative(i)) {
                return Err(ApiError::BadRequest(format!(
                    "image {image:?}: give an absolute path"
                )));
            }
        }
        args.vm.shares.base = self.workspace.clone();
        Ok(command.args)
    }
}

fn open(name: &str) -> Result<Sandbox, ApiError> {
    Ok(Store::new()?.open(name)?)
}

fn sandbox_json(sandbox: &Sandbox) -> Result<serde_json::Value, ApiError> {
    Ok(described(sandbox)?)
}

/// Creates (and, unless `start: false`, starts) a sandbox; what `inspect` shows of it.
pub async fn create(request: CreateRequest) -> Result<serde_json::Value, ApiError> {
    blocking(move || {
        let args = request.create_args()?;
        let sandbox = create_sandbox(&args)?;
        if request.start.unwrap_or(true) {
            if let Err(err) = lifecycle::start(&sandbox) {
                // A sandbox that could not boot is not left behind half-made.
                let name = sandbox.name().to_owned();
                if let Err(cleanup) = lifecycle::remove(sandbox, true) {
                    tracing::warn!(%name, %cleanup, "could not remove the sandbox that failed to start");
                }
                return Err(err.into());
            }
        }
        sandbox_json(&sandbox)
    })
    .await
}

/// `POST /v1/sandboxes`.
pub async fn create_handler(
    JsonBody(request): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let created = create(request).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /v1/sandboxes`: every sandbox, as `inspect` shows it.
pub async fn list() -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    blocking(|| {
        Store::new()?
            .list()?
            .iter()
            .map(sandbox_json)
            .collect::<Result<Vec<_>, _>>()
            .map(Json)
    })
    .await
}

/// `GET /v1/sandboxes/{name}`.
pub async fn inspect(Path(name): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || sandbox_json(&open(&name)?).map(Json)).await
}

/// `POST /v1/sandboxes/{name}/start`.
pub async fn start(Path(name): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let sandbox = open(&name)?;
        lifecycle::start(&sandbox)?;
        sandbox_json(&sandbox).map(Json)
    })
    .await
}

/// `?grace_secs=` of stop.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopQuery {
    /// Seconds the guest has to power off before the VM is stopped hard (default 10).
    pub grace_secs: Option<u64>,
}

/// Stops a sandbox (not running: nothing to do).
pub async fn stop(name: String, grace: Duration) -> Result<serde_json::Value, ApiError> {
    blocking(move || {
        let sandbox = open(&name)?;
        lifecycle::stop(&sandbox, grace)?;
        sandbox_json(&sandbox)
    })
    .await
}

/// `POST /v1/sandboxes/{name}/stop`.
pub async fn stop_handler(
    Path(name): Path<String>,
    Params(query): Params<StopQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let grace = Duration::from_secs(query.grace_secs.unwrap_or(10));
    stop(name, grace).await.map(Json)
}

/// `POST /v1/sandboxes/{name}/pause`.
pub async fn pause(Path(name): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let sandbox = open(&name)?;
        lifecycle::pause(&sandbox)?;
        sandbox_json(&sandbox).map(Json)
    })
    .await
}

/// `POST /v1/sandboxes/{name}/resume`.
pub async fn resume(Path(name): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let sandbox = open(&name)?;
        lifecycle::resume(&sandbox)?;
        sandbox_json(&sandbox).map(Json)
    })
    .await
}

/// `?force=` of remove.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Stop it first if it runs.
    #[serde(default)]
    pub force: bool,
}

/// Removes a sandbox (`force`: stopping it first).
pub async fn remove(name: String, force: bool) -> Result<(), ApiError> {
    blocking(move || Ok(lifecycle::remove(open(&name)?, force)?)).await
}

/// `DELETE /v1/sandboxes/{name}`.
pub async fn remove_handler(
    Path(name): Path<String>,
    Params(query): Params<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    remove(name, query.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?interval_ms=` of stats.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Milliseconds over which CPU use is measured (default 1000, at most 60000).
    pub interval_ms: Option<u64>,
}

/// `GET /v1/sandboxes/{name}/stats`.
pub async fn stats(
    Path(name): Path<String>,
    Params(query): Params<StatsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let interval = Duration::from_millis(query.interval_ms.unwrap_or(1000).min(60_000));
    blocking(move || {
        let measured = measure(vec![open(&name)?], interval)?;
        let one = measured
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("no measurement".into()))?;
        serde_json::to_value(one)
            .map(Json)
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await
}

/// Which log of `GET /v1/sandboxes/{name}/logs`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogKind {
    /// The guest console (kernel and agent).
    #[default]
    Console,
    /// The monitor's log.
    Monitor,
    /// The network decisions, one JSON object per line.
    Network,
}

/// `?kind=` of logs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Which log (default `console`).
    #[serde(default)]
    pub kind: LogKind,
}

/// `GET /v1/sandboxes/{name}/logs`: the log as it is now (console: of the running VM, else
/// of the last run); `text/plain`, or `application/x-ndjson` for the network log.
pub async fn logs(
    Path(name): Path<String>,
    Params(query): Params<LogsQuery>,
) -> Result<Response, ApiError> {
    let (content, kind) = blocking(move || {
        let sandbox = open(&name)?;
        let path = match query.kind {
            LogKind::Monitor => sandbox.file(MONITOR_LOG_FILE),
            LogKind::Network => sandbox.file(NETWORK_LOG_FILE),
            LogKind::Console => match sandbox.state()?.and_then(|s| s.console) {
                Some(live) if sandbox.monitor_alive()? => live,
                _ => sandbox.file(CONSOLE_FILE),
            },
        };
        match std::fs::read(&path) {
            Ok(content) => Ok((content, query.kind)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Vec::new(), query.kind)),
            Err(e) => Err(ApiError::Internal(format!("{}: {e}", path.display()))),
        }
    })
    .await?;
    let content_type = match kind {
        LogKind::Network => "application/x-ndjson",
        LogKind::Console | LogKind::Monitor => "text/plain; charset=utf-8",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], content).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_becomes_create_s_own_arguments() {
        let request: CreateRequest = serde_json::from_value(serde_json::json!({
            "name": "agent",
            "image": "--network=tsi",
            "cpus": 2,
            "memory_mib": 768,
            "volumes": ["/data:/data:ro"],
            "network": { "mode": "none" },
            "env": { "A": "1 2", "B": "--x" },
            "user": "1000",
        }))
        .unwrap();
        let argv = request.to_argv().unwrap();
        assert_eq!(
            argv,
            [
                "create",
                "--name=agent",
                "--cpus=2",
                "--memory=768",
                "--volume=/data:/data:ro",
                "--network=none",
                "--env=A=1 2",
                "--env=B=--x",
                "--user=1000",
                "--",
                "--network=tsi",
            ]
        );
        let parsed = CreateCommand::try_parse_from(argv).unwrap().args;
        // The image that looks like an option is the image, and the network stays `none`.
        assert_eq!(parsed.image.as_deref(), Some("--network=tsi"));
        assert_eq!(parsed.vm.cpus, 2);
        assert_eq!(parsed.env, ["A=1 2", "B=--x"]);
    }

    #[test]
    fn bad_requests_are_refused_with_the_cli_s_reason() {
        let bad = |value: serde_json::Value| {
            let request: CreateRequest = serde_json::from_value(value).unwrap();
            request.create_args().unwrap_err()
        };
        assert!(
            matches!(bad(serde_json::json!({ "cpus": 0 })), ApiError::BadRequest(m) if m.contains("cpus"))
        );
        assert!(matches!(
            bad(serde_json::json!({ "env": { "A=B": "1" } })),
            ApiError::BadRequest(_)
        ));
        assert!(matches!(
            bad(serde_json::json!({ "workspace": "relative/dir" })),
            ApiError::BadRequest(_)
        ));
        assert!(matches!(
            bad(serde_json::json!({ "volumes": ["./here:/data"] })),
            ApiError::BadRequest(m) if m.contains("relative")
        ));
        assert!(serde_json::from_value::<CreateRequest>(serde_json::json!({ "cpu": 1 })).is_err());
    }
}
