//! `krunbox mcp`: an MCP server on stdin/stdout with tools to create a sandbox, run commands
//! in it, read and write its files, list and stop sandboxes — so an agent can drive sandboxes
//! itself. Each tool is the HTTP API's operation of the same name (the official Rust MCP SDK,
//! `rmcp`, speaks the protocol).

mod running;

use std::collections::BTreeMap;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler, ServiceExt};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use running::Running;

use super::error::ApiError;
use super::exec::{prepare, ExecStart, ExitReport};
use super::sandboxes::{self, CreateRequest, NetworkRequest};

/// Output kept per stream of one `exec` (the rest is counted, not kept).
const OUTPUT_LIMIT: usize = 1 << 20;
/// The largest file `read_file` returns.
const READ_LIMIT: usize = 4 << 20;

/// `create_sandbox`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateArgs {
    /// The image (a registry reference; default: krunbox's built-in busybox image).
    pub image: Option<String>,
    /// The sandbox's name (generated when absent).
    pub name: Option<String>,
    /// An absolute host directory to share read-write at the same path.
    pub workspace: Option<String>,
    /// Guest memory in MiB (default 512).
    pub memory_mib: Option<u32>,
    /// vCPUs (default 1).
    pub cpus: Option<u8>,
    /// `user` (default: egress through krunbox's gateway), or `none` (no network).
    pub network: Option<String>,
    /// Host names the guest may reach (`NAME[:PORT]`); with any, all else is denied.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

/// `exec`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ExecArgs {
    /// The sandbox.
    pub sandbox: String,
    /// A shell command line, run with `sh -c`.
    pub command: String,
    /// Text to give the command on stdin.
    pub stdin: Option<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds after which the command is killed (default 300).
    pub timeout_secs: Option<u64>,
}

/// `write_file`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WriteArgs {
    /// The sandbox.
    pub sandbox: String,
    /// Absolute guest path (parents are created).
    pub path: String,
    /// The file's text.
    pub content: String,
    /// Permission bits, octal (default "644").
    pub mode: Option<String>,
}

/// `read_file`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReadArgs {
    /// The sandbox.
    pub sandbox: String,
    /// Absolute guest path.
    pub path: String,
}

/// `stop_sandbox`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct StopArgs {
    /// The sandbox.
    pub sandbox: String,
    /// Remove it too (default true).
    pub remove: Option<bool>,
}

/// The MCP server.
#[derive(Clone)]
pub struct Tools {
    tool_router: ToolRouter<Self>,
    /// The commands of the `exec` calls under way, killed when the client leaves.
    running: Running,
}

fn text(value: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(value.into())])
}

fn json(value: &serde_json::Value) -> CallToolResult {
    text(serde_json::to_string_pretty(value).unwrap_or_default())
}

/// A failed operation is the tool's result (the agent reads why), not a protocol error.
fn failed(err: ApiError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!("{}: {err}", err.kind()))])
}

fn outcome(result: Result<CallToolResult, ApiError>) -> Result<CallToolResult, ErrorData> {
    Ok(result.unwrap_or_else(failed))
}

#[tool_router]
impl Tools {
    /// The tools.
    pub fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
            running: Running::default(),
        }
    }

    #[tool(
        description = "Create and boot a sandbox: a micro-VM with its own kernel. Returns its name, for the other tools."
    )]
    async fn create_sandbox(
        &self,
        Parameters(args): Parameters<CreateArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        outcome(
            async {
                let request = CreateRequest {
                    name: args.name,
                    image: args.image,
                    workspace: args.workspace.map(Into::into),
                    memory_mib: args.memory_mib,
                    cpus: args.cpus,
                    network: NetworkRequest {
                        mode: args.network,
                        allow_hosts: args.allow_hosts,
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let created = sandboxes::create(request).await?;
                Ok(json(&serde_json::json!({
                    "name": created["name"],
                    "status": created["status"],
                })))
            }
            .await,
        )
    }

    #[tool(
        description = "Run a shell command in a sandbox and wait for it. Returns exit_code, stdout and stderr (each cut at 1 MiB)."
    )]
    async fn exec(
        &self,
        Parameters(args): Parameters<ExecArgs>,
        cancelled: CancellationToken,
    ) -> Result<CallToolResult, ErrorData> {
        outcome(exec(args, cancelled, &self.running).await)
    }

    #[tool(description = "Write a text file in a sandbox (parents are created).")]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        outcome(
            async {
                let mode = super::files::mode(args.mode.as_deref())?;
                let (_, client) = super::agent::connect(&args.sandbox).await?;
                let bytes = client
                    .put(args.content.as_bytes(), args.path.as_str(), mode)
                    .await?;
                Ok(text(format!("wrote {bytes} bytes to {}", args.path)))
            }
            .await,
        )
    }

    #[tool(description = "Read a text file of a sandbox (at most 4 MiB).")]
    async fn read_file(
        &self,
        Parameters(args): Parameters<ReadArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        outcome(
            async {
                let (_, client) = super::agent::connect(&args.sandbox).await?;
                let mut content = crate::bounded::BoundedSink::new(READ_LIMIT);
                client
                    .get(args.path.as_str(), &mut content)
                    .await
                    .map_err(|err| match err {
                        krunbox_protocol::client::ClientError::LocalIo { .. } => {
                            ApiError::BadRequest(format!(
                                "{} has more than {READ_LIMIT} bytes; read_file returns at most that",
                                args.path
                            ))
                        }
                        other => other.into(),
                    })?;
                Ok(text(String::from_utf8_lossy(&content.into_bytes())))
            }
            .await,
        )
    }

    #[tool(description = "List sandboxes with their status.")]
    async fn list_sandboxes(&self) -> Result<CallToolResult, ErrorData> {
        outcome(
            async {
                let all = sandboxes::list().await?.0;
                let brief: Vec<_> = all
                    .iter()
                    .map(|s| serde_json::json!({ "name": s["name"], "status": s["status"], "image": s["spec"]["image"] }))
                    .collect();
                Ok(json(&serde_json::Value::Array(brief)))
            }
            .await,
        )
    }

    #[tool(description = "Stop a sandbox, and remove it unless remove is false.")]
    async fn stop_sandbox(
        &self,
        Parameters(args): Parameters<StopArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        outcome(
            async {
                sandboxes::stop(args.sandbox.clone(), Duration::from_secs(10)).await?;
                if args.remove.unwrap_or(true) {
                    sandboxes::remove(args.sandbox.clone(), true).await?;
                    return Ok(text(format!("stopped and removed {}", args.sandbox)));
                }
                Ok(text(format!("stopped {}", args.sandbox)))
            }
            .await,
        )
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        let mut config = ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions(
                "krunbox sandboxes: create_sandbox, then exec / write_file / read_file with its name; stop_sandbox when done.",
            );
        config.server_info.name = "krunbox".into();
        config.server_info.version = env!("CARGO_PKG_VERSION").into();
        config
    }
}

/// One output stream, kept up to [`OUTPUT_LIMIT`].
struct Kept {
    bytes: Vec<u8>,
    dropped: usize,
}

impl Kept {
    fn new() -> Self {
        Self {
            bytes: Vec::new(),
            dropped: 0,
        }
    }

    fn take(&mut self, data: &[u8]) {
        let room = OUTPUT_LIMIT.saturating_sub(self.bytes.len());
        let kept = data.len().min(room);
        self.bytes.extend_from_slice(&data[..kept]);
        self.dropped += data.len() - kept;
    }

    fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!("\n[{} more bytes not shown]", self.dropped));
        }
        text
    }
}

async fn exec(
    args: ExecArgs,
    cancelled: CancellationToken,
    running: &Running,
) -> Result<CallToolResult, ApiError> {
    let start = ExecStart {
        cmd: vec!["sh".into(), "-c".into(), args.command],
        env: args.env,
        cwd: args.cwd,
        user: None,
        tty: false,
        rows: None,
        cols: None,
        term: None,
        stdin: Some(args.stdin.is_some()),
        timeout_secs: Some(args.timeout_secs.unwrap_or(300)),
        ulimits: Vec::new(),
        group_add: Vec::new(),
        cap_drop: Vec::new(),
        cap_add: Vec::new(),
        no_new_privileges: false,
    };
    let starting = running.starting();
    let (client, spec) = prepare(&args.sandbox, &start).await?;
    let mut execution = client.exec(spec).await?;
    let Ok(guard) = starting.arm(execution.control()).await else {
        return Err(ApiError::BadRequest(
            "the client left; the command was killed".into(),
        ));
    };
    let stdin = execution.take_stdin();
    let (_, mut stdout, mut stderr, exit) = execution.split();
    let feed = async move {
        if let (Some(mut input), Some(text)) = (stdin, args.stdin) {
            let _ = input.write(text.as_bytes()).await;
            let _ = input.close().await;
        }
    };
    let (mut out, mut err) = (Kept::new(), Kept::new());
    let read_out = async {
        while let Some(chunk) = stdout.recv().await {
            out.take(&chunk);
        }
    };
    let read_err = async {
        while let Some(chunk) = stderr.recv().await {
            err.take(&chunk);
        }
    };
    let status = tokio::select! {
        ((), (), (), status) = async { tokio::join!(feed, read_out, read_err, exit) } => status,
        () = cancelled.cancelled() => {
            return Err(ApiError::BadRequest("cancelled by the client; the command was killed".into()));
        }
    };
    guard.disarm();
    let report = ExitReport::from(&status?);
    Ok(json(&serde_json::json!({
        "exit_code": report.exit_code,
        "signal": report.signal,
        "timed_out": report.timed_out,
        "spawn_error": report.spawn_error,
        "stdout": out.text(),
        "stderr": err.text(),
    })))
}

/// `krunbox mcp`: serves until the client closes stdin.
pub fn serve_stdio() -> Result<i32, std::io::Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let tools = Tools::new();
        let running = tools.running.clone();
        let service = tools
            .serve(rmcp::transport::stdio())
            .await
            .map_err(std::io::Error::other)?;
        let ended = service.waiting().await.map_err(std::io::Error::other);
        // The client is gone: what it started is not left running.
        running.kill_all().await;
        ended?;
        Ok(0)
    })
}
