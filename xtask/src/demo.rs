//! `cargo xtask demo -- CMD...`: runs CMD through the real agent and protocol client (agent in
//! host mode, no VM), streaming its stdout and stderr and exiting with its status.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use krunbox_protocol::client::{Client, ExecEvent, ExecSpec};
use krunbox_protocol::messages::OutputStream;
use krunbox_protocol::transport::AgentAddress;

use crate::host_agent::HostAgent;

#[derive(clap::Args)]
pub struct Args {
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true)]
    command: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<i32> {
    let agent = HostAgent::start()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(async {
        let address = AgentAddress::Unix(agent.socket.clone());
        let client = Client::connect_with_retry(&address, Duration::from_secs(10)).await?;
        let mut exec = client.exec(ExecSpec::new(args.command.clone())).await?;
        loop {
            match exec.next_event().await? {
                Some(ExecEvent::Output {
                    stream: OutputStream::Stderr,
                    data,
                }) => std::io::stderr().write_all(&data)?,
                Some(ExecEvent::Output { data, .. }) => std::io::stdout().write_all(&data)?,
                Some(ExecEvent::Eof(_)) => {}
                Some(ExecEvent::Exit(status)) => return Ok(status.shell_code()),
                None => anyhow::bail!("the agent closed the exec without an exit status"),
            }
        }
    })
}
