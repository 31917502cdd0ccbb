//! `krunbox cp`: files between the host and a running sandbox.

use std::time::Duration;

use crate::cli::session;
use krunbox_protocol::client::Client;

use super::SandboxCliError;
use crate::backend::VmHandle;
use crate::sandbox::attach::AttachedVm;
use crate::sandbox::copy;
use crate::sandbox::name;
use crate::sandbox::store::Store;

/// Copy files or directories between the host and a running sandbox.
///
/// One of SRC and DST is NAME:PATH (PATH in the sandbox, relative to its working directory
/// when not absolute), the other a host path (write `./file:x` for a host file whose name
/// has a colon). Copying onto an existing directory puts the source inside it; permission
/// bits are kept; symlinks and special files are skipped.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krunbox cp ./src agent:/work/src\n  krunbox cp agent:/tmp/report.txt ."
)]
pub struct CpArgs {
    /// What to copy: a host path or NAME:PATH.
    #[arg(value_name = "SRC")]
    pub src: String,
    /// Where to: NAME:PATH or a host path.
    #[arg(value_name = "DST")]
    pub dst: String,
}

/// One side of `cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Host(std::path::PathBuf),
    Guest { name: String, path: String },
}

impl Endpoint {
    /// `NAME:PATH` when NAME is a valid sandbox name (so no `/` before the colon).
    fn parse(arg: &str) -> Self {
        match arg.split_once(':') {
            Some((name, path)) if name::validate(name).is_ok() => Self::Guest {
                name: name.to_owned(),
                path: path.to_owned(),
            },
            _ => Self::Host(arg.into()),
        }
    }
}

/// `krunbox cp`.
pub fn cp(args: CpArgs) -> Result<i32, SandboxCliError> {
    let (name, guest_path, to_guest, host) =
        match (Endpoint::parse(&args.src), Endpoint::parse(&args.dst)) {
            (Endpoint::Host(host), Endpoint::Guest { name, path }) => (name, path, true, host),
            (Endpoint::Guest { name, path }, Endpoint::Host(host)) => (name, path, false, host),
            _ => {
                return Err(SandboxCliError::Usage(
                    "cp: exactly one of SRC and DST must be NAME:PATH (a sandbox path)".into(),
                ))
            }
        };
    let sandbox = Store::new()?.open(&name)?;
    let spec = sandbox.spec()?;
    let guest_path = if guest_path.starts_with('/') {
        guest_path
    } else {
        let base = spec.workdir.clone().unwrap_or_else(|| "/".into());
        format!("{}/{guest_path}", base.trim_end_matches('/'))
    };
    let address = AttachedVm::new(sandbox)?.agent_address();
    let agent_error = |error| SandboxCliError::Agent {
        name: name.clone(),
        error,
    };
    let copied = session::block_on(async {
        let client = Client::connect_with_retry(&address, Duration::from_secs(30))
            .await
            .map_err(agent_error)?;
        let copied = if to_guest {
            copy::to_guest(&client, &host, &guest_path).await?
        } else {
            copy::from_guest(&client, &guest_path, &host).await?
        };
        Ok::<_, SandboxCliError>(copied)
    })??;
    tracing::info!(files = copied.files, bytes = copied.bytes, "copied");
    if copied.skipped > 0 {
        eprintln!(
            "krunbox: skipped {} symlinks or special files",
            copied.skipped
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_endpoints_are_sandbox_paths_only_with_a_valid_name() {
        assert_eq!(
            Endpoint::parse("box:/tmp/a"),
            Endpoint::Guest {
                name: "box".into(),
                path: "/tmp/a".into()
            }
        );
        assert_eq!(Endpoint::parse("./a:b"), Endpoint::Host("./a:b".into()));
        assert_eq!(
            Endpoint::parse("/abs/path"),
            Endpoint::Host("/abs/path".into())
        );
        assert_eq!(Endpoint::parse("plain"), Endpoint::Host("plain".into()));
    }
}
