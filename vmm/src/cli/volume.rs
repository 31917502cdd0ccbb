//! `krunbox volume create|ls|inspect|rm`: named volumes ([`crate::volumes`]).

use crate::cli::table::{ago, human_size, print_with_header};
use crate::sandbox::store::Store;
use crate::volumes::{VolumeError, VolumeInfo, VolumeStore};

/// Volume subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// Create empty volumes (a name that exists is kept as it is). `-v NAME:/path` on
    /// `run`/`create` also creates one on first use.
    Create {
        /// The volumes.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// List volumes: name, size on disk, when created.
    Ls {
        /// Only the names.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// `table` (default) or `json` (an array of objects).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print volumes as JSON (name, path, created_at, size_bytes, used_by).
    Inspect {
        /// The volumes.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Remove volumes and their files. A volume a running VM uses is refused; so is one a
    /// sandbox names, unless -f.
    Rm {
        /// Remove volumes that sandboxes name too (their next start fails until recreated).
        #[arg(short = 'f', long)]
        force: bool,
        /// The volumes.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

/// Output formats of `volume ls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
}

/// Why a volume command failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeCliError {
    /// The volume.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// Reading the sandboxes that may use it.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// Encoding JSON.
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Some of several volumes failed (each reported).
    #[error("{0} of the volumes failed")]
    Some(usize),
}

/// A volume as `inspect` and `ls --format json` print it.
#[derive(Debug, serde::Serialize)]
struct Described {
    #[serde(flatten)]
    info: VolumeInfo,
    /// Sandboxes whose spec shares it.
    used_by: Vec<String>,
}

/// Runs a volume subcommand; returns the exit code.
pub fn run(command: VolumeCommand) -> Result<i32, VolumeCliError> {
    let store = VolumeStore::new()?;
    match command {
        VolumeCommand::Create { names } => each(&names, |name| {
            let (volume, _) = store.create(name, None)?;
            println!("{}", volume.name());
            Ok(())
        }),
        VolumeCommand::Ls { quiet, format } => {
            let volumes = store.list()?;
            if quiet {
                for volume in &volumes {
                    println!("{}", volume.name());
                }
                return Ok(0);
            }
            let described = volumes
                .iter()
                .map(describe)
                .collect::<Result<Vec<_>, _>>()?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&described)?),
                Format::Table => print_with_header(
                    &["NAME", "SIZE", "CREATED", "USED BY"],
                    described
                        .into_iter()
                        .map(|d| {
                            vec![
                                d.info.name,
                                human_size(d.info.size_bytes),
                                ago(d.info.created_at),
                                d.used_by.join(","),
                            ]
                        })
                        .collect(),
                ),
            }
            Ok(0)
        }
        VolumeCommand::Inspect { names } => {
            let described = names
                .iter()
                .map(|name| describe(&store.open(name)?))
                .collect::<Result<Vec<_>, _>>()?;
            println!("{}", serde_json::to_string_pretty(&described)?);
            Ok(0)
        }
        VolumeCommand::Rm { force, names } => each(&names, |name| {
            let volume = store.open(name)?;
            store.remove(name, &used_by(&volume.data())?, force)?;
            println!("{name}");
            Ok(())
        }),
    }
}

fn describe(volume: &crate::volumes::Volume) -> Result<Described, VolumeCliError> {
    Ok(Described {
        info: volume.info()?,
        used_by: used_by(&volume.data())?,
    })
}

/// The sandboxes whose spec shares `data`.
fn used_by(data: &std::path::Path) -> Result<Vec<String>, VolumeCliError> {
    let mut names = Vec::new();
    for sandbox in Store::new()?.list()? {
        let Ok(spec) = sandbox.spec() else {
            continue;
        };
        if spec.shares.iter().any(|share| share.host_path == data) {
            names.push(sandbox.name().to_owned());
        }
    }
    Ok(names)
}

fn each(
    names: &[String],
    op: impl FnMut(&str) -> Result<(), VolumeCliError>,
) -> Result<i32, VolumeCliError> {
    match crate::cli::for_each_name(names, op)? {
        0 => Ok(0),
        n => Err(VolumeCliError::Some(n)),
    }
}
