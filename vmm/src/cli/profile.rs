//! Profiles: named sets of `run`/`create`/`pool start` options in TOML (`--profile NAME`).
//!
//! Looked up, first match wins:
//! 1. the user's `$XDG_CONFIG_HOME/krunbox/profiles.toml` (`~/.config/krunbox/profiles.toml`);
//! 2. the project's `krunbox.toml` in the current directory.
//!
//! ```toml
//! [profile.node-agent]
//! image = "node:22"
//! workspace = true
//! volumes = ["agent-home:/home/node"]
//! allow_host = ["api.anthropic.com:443"]
//! env = ["NODE_ENV=development"]
//! cpus = 2
//! memory = 2048
//! ```
//!
//! A profile is its options spelled as arguments ([`Profile::to_args`]), put in front of the
//! command line's own, so anything given on the command line wins (a second `--memory`
//! replaces the first; `-e`, `-v` and the rules add up).
//!
//! A project's file comes with the project, perhaps from someone else: what it may ask for is
//! limited to what keeps the sandbox within that project: a registry image, `workspace`, the
//! allowlist of names (not the host's loopback alias), resources, `KEY=VALUE` env, user and
//! workdir, `network = "none"`. It may not boot a host directory as the image, share host
//! directories or the user's volumes, copy host variables, forward the SSH agent, trust the
//! host's CAs, open internal networks (`allow_net`, `add_host`, the host alias), publish ports
//! or ask for TSI; such a profile is refused, naming the setting, and the same settings are
//! fine in the user's own file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The project's profile file, in the current directory.
pub const PROJECT_FILE: &str = "krunbox.toml";

/// Why the command line's profile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// `--profile` without a name.
    #[error("--profile needs a NAME")]
    NoName,
    /// No file defines it.
    #[error("no profile {name:?} in {searched}")]
    NotFound {
        /// The name.
        name: String,
        /// The files looked in.
        searched: String,
    },
    /// A file that cannot be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file that is not a profile file.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        message: String,
    },
    /// A project's profile asks for more than a project may.
    #[error(
        "profile {name:?} in {path} sets {setting}, which a project's {PROJECT_FILE} may not \
         (it could reach outside the project); put it in your own profiles file, or give the \
         option on the command line"
    )]
    NotForAProject {
        /// The profile.
        name: String,
        /// Its file.
        path: PathBuf,
        /// The setting.
        setting: &'static str,
    },
}

/// One profile's settings; every one optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// IMAGE.
    pub image: Option<String>,
    /// `--workspace` (`true`), or its mode (`"share"`, `"review"`: `--workspace=review`).
    pub workspace: Option<WorkspaceSetting>,
    /// `-v` each.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// `--allow-host` each.
    #[serde(default)]
    pub allow_host: Vec<String>,
    /// `--allow-net` each.
    #[serde(default)]
    pub allow_net: Vec<String>,
    /// `--add-host` each.
    #[serde(default)]
    pub add_host: Vec<String>,
    /// `-p` each.
    #[serde(default)]
    pub publish: Vec<String>,
    /// `--network`.
    pub network: Option<String>,
    /// `--ssh`.
    pub ssh: Option<bool>,
    /// `--host-ca`.
    pub host_ca: Option<bool>,
    /// `--secret` each (`NAME@HOST,…`; the value from the environment, never the file).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// `--cpus`.
    pub cpus: Option<u8>,
    /// `--memory` (MiB).
    pub memory: Option<u32>,
    /// `-e` each (not for `pool start`).
    #[serde(default)]
    pub env: Vec<String>,
    /// `-w` (not for `pool start`).
    pub workdir: Option<String>,
    /// `-u` (not for `pool start`).
    pub user: Option<String>,
}

/// A profile's `workspace`: `true`/`false`, or a mode by name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum WorkspaceSetting {
    /// `workspace = true`: shared as it is.
    On(bool),
    /// `workspace = "review"` (or `"share"`), checked by `--workspace`'s own parser.
    Mode(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    profile: BTreeMap<String, Profile>,
}

impl Profile {
    /// The profile as command-line arguments of `subcommand`; IMAGE as `--profile-image`.
    pub fn to_args(&self, subcommand: &str) -> Vec<String> {
        let mut args = Vec::new();
        match &self.workspace {
            Some(WorkspaceSetting::On(true)) => args.push("--workspace".into()),
            Some(WorkspaceSetting::Mode(mode)) => args.push(format!("--workspace={mode}")),
            Some(WorkspaceSetting::On(false)) | None => {}
        }
        let mut flag = |on: Option<bool>, name: &str| {
            if on == Some(true) {
                args.push(name.to_owned());
            }
        };
        flag(self.ssh, "--ssh");
        flag(self.host_ca, "--host-ca");
        let mut each = |name: &str, values: &[String]| {
            for value in values {
                args.push(name.to_owned());
                args.push(value.clone());
            }
        };
        each("-v", &self.volumes);
        each("--allow-host", &self.allow_host);
        each("--allow-net", &self.allow_net);
        each("--add-host", &self.add_host);
        each("-p", &self.publish);
        each("--secret", &self.secrets);
        let per_exec = subcommand != "start";
        if per_exec {
            each("-e", &self.env);
        }
        let mut one = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                args.push(name.to_owned());
                args.push(value);
            }
        };
        one("--network", self.network.clone());
        one("--cpus", self.cpus.map(|c| c.to_string()));
        one("--memory", self.memory.map(|m| m.to_string()));
        if per_exec {
            one("-w", self.workdir.clone());
            one("-u", self.user.clone());
        }
        one("--profile-image", self.image.clone());
        args
    }

    /// The first setting a project's file may not make, if any.
    fn beyond_a_project(&self) -> Option<&'static str> {
        use krunbox_image::source::Source;
        // A path (or `dir:`) would be booted as a writable root: a registry reference only.
        let image_not_a_reference = self
            .image
            .as_deref()
            .is_some_and(|image| !matches!(Source::parse(image), Ok(Source::Registry(_))));
        // A bare KEY copies the host's value into the guest.
        let env_from_host = self.env.iter().any(|e| !e.contains('='));
        // The gateway's own name for the host's loopback.
        let host_alias = self.allow_host.iter().any(|rule| {
            rule.parse::<krunbox_net::policy::HostRule>()
                .is_ok_and(|rule| rule.matches_name(krunbox_net::config::HOST_ALIAS))
        });
        [
            (
                image_not_a_reference,
                "an image that is not a registry reference",
            ),
            // A path shares the host's files; a name, the user's volumes of other projects.
            (!self.volumes.is_empty(), "volumes"),
            (
                env_from_host,
                "env copying a host variable (KEY without =VALUE)",
            ),
            (host_alias, "allow_host for the host's loopback alias"),
            (self.ssh == Some(true), "ssh"),
            (self.host_ca == Some(true), "host_ca"),
            // It would send the user's variable to a host the project chose.
            (!self.secrets.is_empty(), "secrets"),
            (!self.allow_net.is_empty(), "allow_net"),
            (!self.add_host.is_empty(), "add_host"),
            (!self.publish.is_empty(), "publish"),
            (
                self.network
                    .as_deref()
                    .is_some_and(|n| n != "user" && n != "none"),
                "network",
            ),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
    }
}

/// The profile files, the user's first.
fn files() -> Vec<(PathBuf, bool)> {
    let mut files = Vec::new();
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")));
    if let Some(config) = config {
        files.push((config.join("krunbox/profiles.toml"), false));
    }
    files.push((PathBuf::from(PROJECT_FILE), true));
    files
}

/// The profile `name`, from the first file that defines it.
pub fn find(name: &str) -> Result<Profile, ProfileError> {
    let files = files();
    for (path, project) in &files {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ProfileError::Io {
                    path: path.clone(),
                    source,
                })
            }
        };
        let file: ProfileFile = toml::from_str(&text).map_err(|e| ProfileError::Syntax {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let Some(profile) = file.profile.get(name) else {
            continue;
        };
        if *project {
            if let Some(setting) = profile.beyond_a_project() {
                return Err(ProfileError::NotForAProject {
                    name: name.to_owned(),
                    path: path.clone(),
                    setting,
                });
            }
        }
        return Ok(profile.clone());
    }
    Err(ProfileError::NotFound {
        name: name.to_owned(),
        searched: files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The command line with its `--profile NAME` (of `run`, `create` or `pool start`, before
/// `--`) followed by the profile's arguments, so that the command line's own come after it.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, ProfileError> {
    let word = |i: usize| argv.get(i).map(|a| a.to_string_lossy().into_owned());
    // The index of the subcommand the options follow.
    let at = match (word(1).as_deref(), word(2).as_deref()) {
        (Some("run" | "create"), _) => 1,
        (Some("pool"), Some("start")) => 2,
        _ => return Ok(argv),
    };
    let subcommand = word(at).unwrap_or_default();
    let mut out: Vec<OsString> = argv[..=at].to_vec();
    let mut profiles = Vec::new();
    let mut rest = argv[at + 1..].iter();
    while let Some(arg) = rest.next() {
        out.push(arg.clone());
        if arg == "--" {
            out.extend(rest.cloned());
            break;
        }
        let text = arg.to_string_lossy();
        if text == "--profile" {
            let name = rest.next().ok_or(ProfileError::NoName)?;
            out.push(name.clone());
            profiles.push(name.to_string_lossy().into_owned());
        } else if let Some(name) = text.strip_prefix("--profile=") {
            profiles.push(name.to_owned());
        }
    }
    // In front of everything the command line says, so that the command line wins.
    for name in profiles.iter().rev() {
        if name.is_empty() {
            return Err(ProfileError::NoName);
        }
        let expanded = find(name)?.to_args(&subcommand);
        out.splice(at + 1..at + 1, expanded.into_iter().map(OsString::from));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_profile_is_its_options_in_front_of_the_command_line() {
        let profile: ProfileFile = toml::from_str(
            r#"
            [profile.agent]
            image = "node:22"
            workspace = true
            allow_host = ["api.anthropic.com:443"]
            env = ["A=1"]
            cpus = 2
            memory = 2048
            user = "node"
            "#,
        )
        .unwrap();
        let agent = &profile.profile["agent"];
        let review: ProfileFile = toml::from_str("[profile.r]\nworkspace = \"review\"\n").unwrap();
        assert_eq!(review.profile["r"].to_args("run"), ["--workspace=review"]);
        assert_eq!(
            agent.to_args("run"),
            [
                "--workspace",
                "--allow-host",
                "api.anthropic.com:443",
                "-e",
                "A=1",
                "--cpus",
                "2",
                "--memory",
                "2048",
                "-u",
                "node",
                "--profile-image",
                "node:22"
            ]
        );
        // `pool start` has no per-exec options.
        assert!(!agent
            .to_args("start")
            .iter()
            .any(|a| a == "-e" || a == "-u"));
        assert_eq!(agent.beyond_a_project(), None);
    }

    #[test]
    fn a_project_may_not_reach_outside_itself() {
        for (toml, setting) in [
            (r#"volumes = ["/etc:/x"]"#, "volumes"),
            (r#"volumes = ["src/../..:/x"]"#, "volumes"),
            (r#"volumes = ["agent-home:/x"]"#, "volumes"),
            (
                r#"image = "/""#,
                "an image that is not a registry reference",
            ),
            (
                r#"image = "dir:/home""#,
                "an image that is not a registry reference",
            ),
            (
                r#"env = ["AWS_SECRET_ACCESS_KEY"]"#,
                "env copying a host variable (KEY without =VALUE)",
            ),
            (
                r#"allow_host = ["host.krunbox.internal"]"#,
                "allow_host for the host's loopback alias",
            ),
            (
                r#"allow_host = ["*.krunbox.internal:22"]"#,
                "allow_host for the host's loopback alias",
            ),
            ("ssh = true", "ssh"),
            ("host_ca = true", "host_ca"),
            (r#"secrets = ["K@a.test"]"#, "secrets"),
            (r#"allow_net = ["10.0.0.0/8"]"#, "allow_net"),
            (r#"add_host = ["a:127.0.0.1"]"#, "add_host"),
            (r#"publish = ["80:80"]"#, "publish"),
            (r#"network = "tsi""#, "network"),
        ] {
            let profile: Profile = toml::from_str(toml).unwrap();
            assert_eq!(profile.beyond_a_project(), Some(setting), "{toml}");
        }
        assert!(
            toml::from_str::<Profile>("memroy = 1").is_err(),
            "a typo is an error"
        );
    }

    #[test]
    fn the_shipped_node_agent_profile_parses() {
        let file: ProfileFile =
            toml::from_str(include_str!("../../../profiles/node-agent.toml")).unwrap();
        let agent = &file.profile["node-agent"];
        assert_eq!(agent.image.as_deref(), Some("node:22"));
        let args = agent.to_args("create");
        for expected in ["--workspace", "--ssh", "--host-ca", "--allow-host", "-v"] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        // A user's file: it mounts a volume and forwards the SSH agent, which a project's may
        // not.
        assert!(agent.beyond_a_project().is_some());
        // Its commented secret, uncommented, is a --secret.
        let shipped =
            include_str!("../../../profiles/node-agent.toml").replace("# secrets = ", "secrets = ");
        let file: ProfileFile = toml::from_str(&shipped).unwrap();
        let args = file.profile["node-agent"].to_args("run");
        let at = args.iter().position(|a| a == "--secret").expect("--secret");
        assert_eq!(args[at + 1], "ANTHROPIC_API_KEY@api.anthropic.com");
    }

    #[test]
    fn without_a_profile_the_command_line_is_unchanged() {
        let argv = os(&["krunbox", "run", "-e", "A=1", "--", "sh", "--profile", "x"]);
        assert_eq!(expand(argv.clone()).unwrap(), argv);
        let argv = os(&["krunbox", "ps"]);
        assert_eq!(expand(argv.clone()).unwrap(), argv);
        assert!(matches!(
            expand(os(&["krunbox", "run", "--profile"])),
            Err(ProfileError::NoName)
        ));
    }
}
