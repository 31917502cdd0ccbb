//! `krunbox create`: a named sandbox from an image and VM settings.

use krunbox_image::config::RunOverrides;

use crate::cli::vm_args::VmArgs;
use crate::guest::command::GuestCommand;

use super::SandboxCliError;
use crate::sandbox::spec::{now, SandboxSpec};
use crate::sandbox::store::{Sandbox, Store};
use crate::sandbox::{name, SandboxError};

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
    /// The VM: backend, CPUs, memory, shares, SSH agent (checked again at every start),
    /// network (every decision is also logged in the sandbox: `krunbox logs --network NAME`),
    /// kernel.
    #[command(flatten)]
    pub vm: VmArgs,
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
    /// Add a supplementary group of the image (name or GID) to that user, beyond its own
    /// memberships in the image's /etc/group. Repeatable.
    #[arg(long = "group-add", value_name = "GROUP")]
    pub group_add: Vec<String>,
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

/// `krunbox create`.
pub fn create(args: CreateArgs) -> Result<i32, SandboxCliError> {
    let sandbox = create_sandbox(&args)?;
    println!("{}", sandbox.name());
    Ok(0)
}

/// The sandbox `args` describe, recorded in the store (not started): `krunbox create`, and
/// `krunbox serve`'s create.
pub fn create_sandbox(args: &CreateArgs) -> Result<Sandbox, SandboxCliError> {
    let name = args.name.clone().unwrap_or_else(name::generate);
    name::validate(&name).map_err(SandboxError::from)?;
    let hostname = args.hostname.clone().unwrap_or_else(|| name.clone());
    let spec = sandbox_spec(
        name,
        args.vm.image(&args.image).as_deref(),
        &args.vm,
        &ExecDefaults {
            env: &args.env,
            workdir: args.workdir.clone(),
            user: args.user.clone(),
            group_add: &args.group_add,
        },
        hostname,
        args.boot_timeout,
    )?;
    Ok(Store::new()?.create(&spec)?)
}

/// `-e`, `-w` and `-u` of a sandbox: what every `exec` gets unless it says otherwise.
pub struct ExecDefaults<'a> {
    /// `-e KEY=VALUE`.
    pub env: &'a [String],
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `--group-add`.
    pub group_add: &'a [String],
}

/// The sandbox `name` of IMAGE with these VM settings, the image pulled (or imported) now so
/// that `start` finds it in the store: what `krunbox create` records, and what every member of
/// a warm pool is made from.
pub fn sandbox_spec(
    name: String,
    image: Option<&str>,
    vm: &VmArgs,
    defaults: &ExecDefaults<'_>,
    hostname: String,
    boot_timeout: u64,
) -> Result<SandboxSpec, SandboxCliError> {
    let ssh_agent = vm.ssh.resolve()?;
    let network = vm.net.network()?;
    crate::cli::net_args::refuse_secret_env(&network, defaults.env)?;
    let options = crate::guest::rootfs::ImageOptions {
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ..Default::default()
    };
    let root = crate::guest::rootfs::prepare(image, &options)?;
    // A review copy of the workspace is kept under the sandbox's name.
    let mut share_args = vm.shares.clone();
    share_args.review_id = Some(name.clone());
    let shares = share_args.resolve()?;
    // Docker's rules for Env, WorkingDir and User; `exec` always names its own command.
    let command = GuestCommand::resolve(
        &root,
        &shares,
        RunOverrides {
            entrypoint: Some(String::new()),
            command: vec!["sh".into()],
            env: defaults.env.to_vec(),
            workdir: defaults.workdir.clone(),
            user: defaults.user.clone(),
        },
        defaults.group_add,
    )?;
    Ok(SandboxSpec {
        hostname,
        name,
        image: image.map(str::to_owned),
        rootfs: root.rootfs.clone(),
        overlay: root.overlay,
        shares: shares.dirs.clone(),
        network,
        cpus: vm.cpus,
        memory_mib: vm.memory,
        env: command.env,
        workdir: Some(command.workdir),
        user: command.user,
        groups: command.groups,
        kernel: vm.kernel.clone(),
        backend: vm.backend_kind(),
        accel: vm.accel(),
        boot_timeout_secs: boot_timeout,
        created_at: now(),
        ssh_agent,
        ca_bundle: shares.ca_bundle.clone(),
    })
}
