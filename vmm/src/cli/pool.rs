//! `krunbox pool start/ls/stop`: warm pools of booted VMs that `krunbox run` takes instead of
//! booting (see `crate::pool`).

use std::time::{Duration, Instant};

use super::sandbox::{sandbox_spec, ExecDefaults, SandboxCliError};
use super::table::print_with_header;
use super::vm_args::VmArgs;
use crate::pool::keeper::Event;
use crate::pool::{PoolError, PoolKey, PoolSpec, Pools, KEEPER_LOG_FILE};
use crate::self_spawn::{self, Job};

/// How long `pool stop` waits for the runs that hold members.
const STOP_PATIENCE: Duration = Duration::from_secs(120);

/// Keep booted VMs ready, so that `krunbox run` with the same VM settings starts without a
/// boot.
///
/// A pool serves the runs whose VM is exactly its members': the same IMAGE (as stored now),
/// backend, --cpus, --memory, --kernel, --hostname, shares (-v, --workspace, --host-ca),
/// --ssh and network options. Everything else (the command, -e, -w, -u, -i, -t) is given per
/// run. A run takes one ready member, runs its command there and throws the VM away: no VM
/// is ever used twice, so nothing one run leaves is seen by the next. The pool's keeper
/// boots a replacement in the background. A run with other settings boots as usual.
#[derive(Debug, clap::Subcommand)]
pub enum PoolCommand {
    /// Start a pool and wait until its VMs are booted.
    #[command(
        after_help = "Examples:\n  krunbox pool start --size 2\n  krunbox run -- true      # takes a warm VM\n  krunbox pool start --name py --size 1 --memory 1024 python:3.12\n  krunbox pool ls\n  krunbox pool stop py"
    )]
    Start(Box<StartArgs>),
    /// List pools: size, members ready, in use and booting, image.
    Ls(LsArgs),
    /// Stop pools: their ready VMs are removed, the ones in use when their runs end.
    Stop(StopArgs),
}

/// `krunbox pool start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The pool's name (letters, digits, '_', '.', '-').
    #[arg(long, default_value = "default")]
    pub name: String,
    /// How many booted VMs to keep ready.
    #[arg(long, default_value_t = 1)]
    pub size: usize,
    /// Return once the keeper runs, without waiting for the VMs to boot.
    #[arg(long)]
    pub no_wait: bool,
    /// The VMs: backend, CPUs, memory, shares, SSH agent, network, kernel (as for `run`).
    #[command(flatten)]
    pub vm: VmArgs,
    /// The guest's hostname (as `run --hostname`).
    #[arg(long, default_value = "krunbox")]
    pub hostname: String,
    /// Seconds each VM may take to boot.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub boot_timeout: u64,
    /// The image (default: the built-in image); pulled now if missing.
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
}

/// `krunbox pool ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// `table` (default) or `json`.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Output format of `pool ls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for people.
    Table,
    /// One JSON array, for scripts.
    Json,
}

/// `krunbox pool stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The pools.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Runs a `krunbox pool` command.
pub fn run(command: PoolCommand) -> Result<i32, SandboxCliError> {
    match command {
        PoolCommand::Start(args) => start(&args),
        PoolCommand::Ls(args) => ls(&args),
        PoolCommand::Stop(args) => {
            let failed = super::for_each_name(&args.names, |name| {
                stop(name).map_err(SandboxCliError::from)
            })?;
            Ok(if failed > 0 { 1 } else { 0 })
        }
    }
}

fn start(args: &StartArgs) -> Result<i32, SandboxCliError> {
    crate::names::validate("pool", &args.name).map_err(PoolError::from)?;
    if args.size == 0 || args.size > crate::pool::MAX_SIZE {
        return Err(PoolError::Size(args.size).into());
    }
    if args.vm.shares.workspace == Some(crate::cli::share_args::WorkspaceMode::Review) {
        // Each VM would need a copy of its own, made before anyone asks for it.
        return Err(SandboxCliError::Usage(
            "a warm pool cannot have --workspace=review: use it with run or create".into(),
        ));
    }
    let member = sandbox_spec(
        args.name.clone(),
        args.vm.image(&args.image).as_deref(),
        &args.vm,
        &ExecDefaults {
            env: &[],
            workdir: None,
            user: None,
            group_add: &[],
        },
        args.hostname.clone(),
        args.boot_timeout,
    )?;
    let backend = crate::backend::select(member.backend, member.kernel.is_some())
        .map_err(|e| SandboxCliError::Usage(e.to_string()))?
        .kind();
    let guest_init =
        crate::guest::agent::locate().map_err(|e| SandboxCliError::Usage(e.to_string()))?;
    let key = PoolKey::of(&member.vm_spec(guest_init), backend);
    let spec = PoolSpec {
        name: args.name.clone(),
        size: args.size,
        member,
        backend,
        key,
    };
    let pool = Pools::new()?.create(&spec)?;
    let log = pool.dir().join(KEEPER_LOG_FILE);
    let keeper_failed = |problem: String| PoolError::Keeper {
        name: spec.name.clone(),
        problem,
        log: log.clone(),
    };
    if let Err(problem) = spawn_keeper(pool.dir(), &log) {
        let _ = pool.clone().remove();
        return Err(keeper_failed(problem).into());
    }
    if args.no_wait {
        println!("{}", spec.name);
        return Ok(0);
    }
    // A boot per member, one after the other.
    let limit = Duration::from_secs(args.boot_timeout) * args.size as u32 + Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    let mut shown = usize::MAX;
    loop {
        let census = pool.census()?;
        if census.ready != shown && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!(
                "krunbox: pool {}: {}/{} ready",
                spec.name, census.ready, spec.size
            );
            shown = census.ready;
        }
        if census.ready >= spec.size {
            break;
        }
        if !pool.keeper_alive()? {
            return Err(keeper_failed(format!(
                "exited; its log:\n{}",
                crate::backend::log_tail(&log, 10)
            ))
            .into());
        }
        if Instant::now() > deadline {
            return Err(
                keeper_failed(format!("did not boot {} VMs within {limit:?}", spec.size)).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("{}", spec.name);
    Ok(0)
}

/// Starts `krunbox __pool-keeper DIR` and waits for its first word.
fn spawn_keeper(dir: &std::path::Path, log: &std::path::Path) -> Result<(), String> {
    let (mut child, events) =
        self_spawn::spawn_detached::<Event>(Job::POOL_KEEPER, dir, log, "keeper-events")?;
    let answer = events.recv_timeout(Duration::from_secs(30));
    let _ = child.try_wait();
    match answer {
        Ok(Event::Keeping) => Ok(()),
        Ok(Event::Failed { message }) => Err(message),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err("did not answer".into())
        }
    }
}

fn ls(args: &LsArgs) -> Result<i32, SandboxCliError> {
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for pool in Pools::new()?.list()? {
        let spec = pool.spec()?;
        let census = pool.census()?;
        let keeper = pool.keeper_alive()?;
        let image = spec
            .member
            .image
            .clone()
            .unwrap_or_else(|| "(default)".into());
        json.push(serde_json::json!({
            "name": spec.name,
            "size": spec.size,
            "ready": census.ready,
            "in_use": census.in_use,
            "spent": census.spent,
            "booting": census.booting,
            "keeper_running": keeper,
            "image": spec.member.image,
            "backend": spec.backend,
            "cpus": spec.member.cpus,
            "memory_mib": spec.member.memory_mib,
        }));
        rows.push(vec![
            spec.name,
            spec.size.to_string(),
            census.ready.to_string(),
            census.in_use.to_string(),
            census.booting.to_string(),
            if keeper { "running" } else { "stopped" }.to_owned(),
            image,
        ]);
    }
    match args.format {
        Format::Json => println!("{}", serde_json::Value::Array(json)),
        Format::Table => print_with_header(
            &[
                "NAME", "SIZE", "READY", "IN USE", "BOOTING", "KEEPER", "IMAGE",
            ],
            rows,
        ),
    }
    Ok(0)
}

/// Asks the keeper to empty the pool and waits until it is gone; without a keeper (killed),
/// removes the members itself.
fn stop(name: &str) -> Result<(), PoolError> {
    let pool = Pools::new()?.open(name)?;
    pool.request_stop()?;
    let deadline = Instant::now() + STOP_PATIENCE;
    let mut said = false;
    while pool.dir().exists() {
        if !pool.keeper_alive()? {
            if !pool.dir().exists() {
                break; // the keeper finished and removed it just now
            }
            // Nobody to do it: the keeper's work, once, here.
            crate::pool::keeper::empty_without_keeper(&pool)?;
            break;
        }
        let census = pool.census()?;
        if census.in_use > 0 && !said {
            eprintln!(
                "krunbox: pool {name}: waiting for {} run(s) to finish",
                census.in_use
            );
            said = true;
        }
        if Instant::now() > deadline {
            return Err(PoolError::Keeper {
                name: name.to_owned(),
                problem: format!("did not empty the pool within {STOP_PATIENCE:?}"),
                log: pool.dir().join(KEEPER_LOG_FILE),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
