//! `cargo xtask demo -- CMD...`: runs CMD through the real agent and protocol client (agent in
//! host mode, no VM), streaming its stdout and stderr and exiting with its status.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use krunbox_protocol::client::{Client, ExecEvent, ExecSpec};
use krunbox_protocol::messages::{Outcome, OutputStream};
use krunbox_protocol::transport::AgentAddress;

use crate::host_agent::HostAgent;

#[derive(clap::Args)]
pub struct Args {
    /// Talk to an already running agent instead (e.g. `hybrid-vsock:/run/vm.vsock:1024` for a
    /// booted guest); by default a host-mode agent is started.
    #[arg(long)]
    address: Option<AgentAddress>,
    /// How long to wait for the agent to answer.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
    /// Power the guest off once the command exited (one-shot).
    #[arg(long)]
    power_off: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true)]
    command: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<i32> {
    let agent = match &args.address {
        Some(_) => None,
        None => Some(HostAgent::start()?),
    };
    let address = match (&args.address, &agent) {
        (Some(address), _) => address.clone(),
        (None, Some(agent)) => AgentAddress::Unix(agent.socket.clone()),
        (None, None) => anyhow::bail!("no agent to talk to"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(async {
        let client =
            Client::connect_with_retry(&address, Duration::from_secs(args.wait_secs)).await?;
        let mut exec = client
            .exec(ExecSpec::new(args.command.clone()).power_off_on_exit(args.power_off))
            .await?;
        loop {
            match exec.next_event().await? {
                Some(ExecEvent::Output {
                    stream: OutputStream::Stderr,
                    data,
                }) => std::io::stderr().write_all(&data)?,
                Some(ExecEvent::Output { data, .. }) => std::io::stdout().write_all(&data)?,
                Some(ExecEvent::Eof(_)) => {}
                Some(ExecEvent::Exit(status)) => {
                    if let Some(Outcome::SpawnFailed(failure)) = &status.outcome {
                        eprintln!(
                            "could not start {:?}: {} (errno {})",
                            args.command, failure.message, failure.errno
                        );
                    }
                    return Ok(status.shell_code());
                }
                None => anyhow::bail!("the agent closed the exec without an exit status"),
            }
        }
    })
}
