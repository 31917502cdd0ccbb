//! The image configuration (what `docker inspect` shows under `Config`) and how CLI options
//! override it, with Docker's rules:
//!
//! - `--entrypoint X` replaces the image's Entrypoint with `[X]` (an empty string clears it)
//!   and discards the image's Cmd;
//! - a trailing command replaces Cmd;
//! - the process runs Entrypoint ++ Cmd;
//! - `-e KEY=VALUE` overrides or appends; `-e KEY` copies KEY from the host environment
//!   (dropped when unset); PATH gets Docker's default when neither sets it;
//! - `-w` replaces WorkingDir (default `/`), `-u` replaces User (default root).

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Docker's default PATH for images that do not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The image configuration blob (OCI image config / Docker image JSON), the parts krunbox uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfigFile {
    /// GOARCH.
    #[serde(default)]
    pub architecture: String,
    /// GOOS.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Defaults for running the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ImageConfig>,
    /// Layer diff IDs (digests of the uncompressed layers).
    #[serde(default)]
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digests of the uncompressed layer tars, in order.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// Run defaults from the image (the `config` object; Docker's capitalised field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `KEY=VALUE` strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Executable and leading arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments (or command when there is no entrypoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Signal that stops the container (`SIGTERM` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// What the user gave on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOverrides {
    /// `--entrypoint` (an empty string clears the image's entrypoint).
    pub entrypoint: Option<String>,
    /// The trailing command (`krunbox run IMAGE -- CMD...`); empty keeps the image's Cmd.
    pub command: Vec<String>,
    /// `-e KEY=VALUE` or `-e KEY`, in order.
    pub env: Vec<String>,
    /// `-w DIR`.
    pub workdir: Option<String>,
    /// `-u USER[:GROUP]`.
    pub user: Option<String>,
}

/// What to run, after merging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` strings, image first, CLI overrides applied in place.
    pub env: Vec<String>,
    /// Absolute working directory.
    pub workdir: String,
    /// User spec (`root` when neither image nor CLI set one); resolve it against the image's
    /// /etc/passwd with [`crate::user::resolve_user`].
    pub user: String,
}

/// Why no run configuration could be built.
#[derive(Debug, thiserror::Error)]
pub enum RunConfigError {
    /// Neither the image nor the CLI names a program.
    #[error("no command: the image has no Entrypoint or Cmd; give one after `--`")]
    NoCommand,
    /// `-e =x` and the like.
    #[error("invalid environment variable {0:?}: expected KEY=VALUE or KEY")]
    BadEnv(String),
    /// A relative `-w`.
    #[error("working directory {0:?} must be an absolute path")]
    RelativeWorkdir(String),
}

/// Merges the image's defaults with CLI overrides the way `docker run` does. `host_env`
/// answers `-e KEY` lookups (pass `|k| std::env::var(k).ok()`).
pub fn merge_run_config(
    image: &ImageConfig,
    overrides: &RunOverrides,
    host_env: impl Fn(&str) -> Option<String>,
) -> Result<RunConfig, RunConfigError> {
    let (entrypoint, image_cmd) = match &overrides.entrypoint {
        Some(entrypoint) if entrypoint.is_empty() => (Vec::new(), Vec::new()),
        Some(entrypoint) => (vec![entrypoint.clone()], Vec::new()),
        None => (
            image.entrypoint.clone().unwrap_or_default(),
            image.cmd.clone().unwrap_or_default(),
        ),
    };
    let cmd = if overrides.command.is_empty() {
        image_cmd
    } else {
        overrides.command.clone()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(RunConfigError::NoCommand);
    }

    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    for item in &overrides.env {
        let (key, value) = match item.split_once('=') {
            Some((key, value)) => (key.to_owned(), Some(value.to_owned())),
            None => (item.clone(), host_env(item)),
        };
        if key.is_empty() || key.contains('\0') {
            return Err(RunConfigError::BadEnv(item.clone()));
        }
        let Some(value) = value else { continue };
        set_env(&mut env, &key, &value);
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }

    let workdir = overrides
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_owned());
    if !workdir.starts_with('/') {
        return Err(RunConfigError::RelativeWorkdir(workdir));
    }
    let user = overrides
        .user
        .clone()
        .or_else(|| image.user.clone().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "root".to_owned());
    Ok(RunConfig {
        argv,
        env,
        workdir,
        user,
    })
}

fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/entry.sh".into()]),
            cmd: Some(vec!["serve".into(), "--port=80".into()]),
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            working_dir: Some("/app".into()),
            user: Some("app".into()),
            ..Default::default()
        }
    }

    fn no_host(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn image_defaults() {
        let run = merge_run_config(&image(), &RunOverrides::default(), no_host).unwrap();
        assert_eq!(run.argv, ["/entry.sh", "serve", "--port=80"]);
        assert_eq!(run.env, ["PATH=/bin", "A=1"]);
        assert_eq!(run.workdir, "/app");
        assert_eq!(run.user, "app");
    }

    #[test]
    fn trailing_command_replaces_cmd_only() {
        let o = RunOverrides {
            command: vec!["debug".into()],
            ..Default::default()
        };
        assert_eq!(
            merge_run_config(&image(), &o, no_host).unwrap().argv,
            ["/entry.sh", "debug"]
        );
    }

    #[test]
    fn entrypoint_override_drops_image_cmd() {
        let o = RunOverrides {
            entrypoint: Some("/bin/sh".into()),
            ..Default::default()
        };
        assert_eq!(
            merge_run_config(&image(), &o, no_host).unwrap().argv,
            ["/bin/sh"]
        );
        let o = RunOverrides {
            entrypoint: Some(String::new()),
            command: vec!["ls".into(), "-l".into()],
            ..Default::default()
        };
        assert_eq!(
            merge_run_config(&image(), &o, no_host).unwrap().argv,
            ["ls", "-l"]
        );
        let o = RunOverrides {
            entrypoint: Some(String::new()),
            ..Default::default()
        };
        assert!(matches!(
            merge_run_config(&image(), &o, no_host),
            Err(RunConfigError::NoCommand)
        ));
    }

    #[test]
    fn env_workdir_user_overrides() {
        let o = RunOverrides {
            env: vec![
                "A=2".into(),
                "B=x=y".into(),
                "HOSTVAR".into(),
                "UNSET".into(),
            ],
            workdir: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            ..Default::default()
        };
        let run =
            merge_run_config(&image(), &o, |k| (k == "HOSTVAR").then(|| "h".to_owned())).unwrap();
        assert_eq!(run.env, ["PATH=/bin", "A=2", "B=x=y", "HOSTVAR=h"]);
        assert_eq!(run.workdir, "/tmp");
        assert_eq!(run.user, "1000:1000");
        let bad = RunOverrides {
            env: vec!["=x".into()],
            ..Default::default()
        };
        assert!(matches!(
            merge_run_config(&image(), &bad, no_host),
            Err(RunConfigError::BadEnv(_))
        ));
        let rel = RunOverrides {
            workdir: Some("rel".into()),
            ..Default::default()
        };
        assert!(matches!(
            merge_run_config(&image(), &rel, no_host),
            Err(RunConfigError::RelativeWorkdir(_))
        ));
    }

    #[test]
    fn empty_image_gets_default_path_and_root() {
        let o = RunOverrides {
            command: vec!["true".into()],
            ..Default::default()
        };
        let run = merge_run_config(&ImageConfig::default(), &o, no_host).unwrap();
        assert_eq!(run.env, [format!("PATH={DEFAULT_PATH}")]);
        assert_eq!(run.workdir, "/");
        assert_eq!(run.user, "root");
    }

    #[test]
    fn parses_docker_config_json() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/x"],"Cmd":["/bin/sh"],"WorkingDir":"/w","User":"1:2"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let file: ImageConfigFile = serde_json::from_str(json).unwrap();
        let config = file.config.unwrap();
        assert_eq!(config.cmd.unwrap(), ["/bin/sh"]);
        assert_eq!(config.working_dir.as_deref(), Some("/w"));
        assert_eq!(config.user.as_deref(), Some("1:2"));
    }
}
