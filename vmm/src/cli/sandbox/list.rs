//! `krunbox ps` and `krunbox inspect`.

use super::SandboxCliError;
use crate::cli::table::{ago, print_table};
use crate::sandbox::store::{Sandbox, Store};
use crate::sandbox::SandboxError;

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

/// `krunbox inspect`.
pub fn inspect(args: InspectArgs) -> Result<i32, SandboxCliError> {
    let store = Store::new()?;
    let mut all = Vec::new();
    for name in &args.names {
        all.push(described(&store.open(name)?)?);
    }
    let text = serde_json::to_string_pretty(&all).map_err(SandboxError::Json)?;
    println!("{text}");
    Ok(0)
}

/// A sandbox as `inspect` prints it (and `krunbox serve` returns it): name, directory,
/// status, spec and the last state.
pub fn described(sandbox: &Sandbox) -> Result<serde_json::Value, SandboxError> {
    Ok(serde_json::json!({
        "name": sandbox.name(),
        "dir": sandbox.dir(),
        "status": sandbox.status()?,
        "spec": sandbox.spec()?,
        "state": sandbox.state()?,
    }))
}
