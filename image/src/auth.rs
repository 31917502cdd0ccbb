//! Registry credentials.
//!
//! Looked up, first match wins:
//! 1. `KRUNBOX_REGISTRY_TOKEN` (a bearer token), or `KRUNBOX_REGISTRY_USERNAME` +
//!    `KRUNBOX_REGISTRY_PASSWORD`, like `skopeo --creds` — sent only to the registry named by
//!    `KRUNBOX_REGISTRY_AUTH_FOR` (`host[:port]`, `docker.io` for Docker Hub). Credentials in
//!    the environment without it are an error rather than a secret handed to whichever
//!    registry an image reference (or a hostile index) names; pulls from other registries
//!    fall through to the files below;
//! 2. a Docker-style config file: `$KRUNBOX_AUTH_FILE`, else
//!    `$XDG_CONFIG_HOME/krunbox/auth.json` (`~/.config/krunbox/auth.json`), else
//!    `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`), with
//!    `{"auths": {"REGISTRY": {"auth": "base64(user:password)"}}}` (or `username` +
//!    `password`, or `identitytoken`). Credential helpers (`credsStore`) are not run;
//! 3. anonymous.
//!
//! The registry answers with a challenge; [`crate::registry_http`] then either sends Basic
//! credentials or exchanges them for a bearer token at the realm it names
//! ([`crate::registry_token`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::reference::DOCKER_HUB;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials.
    Anonymous,
    /// Username and password (Basic, or exchanged for a token).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// A bearer token used as is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    pub(crate) fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth;
        match self {
            Self::Anonymous => RegistryAuth::Anonymous,
            Self::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Self::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// Why the credentials file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unreadable file.
    #[error("reading registry credentials {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Credentials in the environment without the registry they are for.
    #[error("KRUNBOX_REGISTRY_USERNAME/PASSWORD or KRUNBOX_REGISTRY_TOKEN is set but KRUNBOX_REGISTRY_AUTH_FOR is not: set it to the registry they are for (pulling from {registry}); krunbox does not send them to every registry")]
    UnscopedEnvCredentials {
        /// The registry being pulled from.
        registry: String,
    },
    /// Not JSON of the Docker config shape.
    #[error("registry credentials {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// Credentials for `registry` from the environment and the first config file that exists.
pub fn credentials_for(registry: &str) -> Result<Credentials, AuthError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(credentials) = env_credentials(registry, env)? {
        return Ok(credentials);
    }
    match auth_files().into_iter().find(|p| p.is_file()) {
        Some(path) => credentials_from_file(&path, registry),
        None => Ok(Credentials::Anonymous),
    }
}

/// The environment's credentials if they are for `registry`.
fn env_credentials(
    registry: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Credentials>, AuthError> {
    let credentials = if let Some(token) = env("KRUNBOX_REGISTRY_TOKEN") {
        Credentials::Bearer(token)
    } else if let (Some(username), Some(password)) = (
        env("KRUNBOX_REGISTRY_USERNAME"),
        env("KRUNBOX_REGISTRY_PASSWORD"),
    ) {
        Credentials::Basic { username, password }
    } else {
        return Ok(None);
    };
    match env("KRUNBOX_REGISTRY_AUTH_FOR") {
        Some(scope) if same_registry(&scope, registry) => Ok(Some(credentials)),
        Some(scope) => {
            tracing::debug!(%scope, %registry, "credentials in the environment are for another registry");
            Ok(None)
        }
        None => Err(AuthError::UnscopedEnvCredentials {
            registry: registry.to_owned(),
        }),
    }
}

/// Whether two spellings name the same registry (scheme, trailing `/` and case aside; the
/// Docker Hub aliases are one registry).
fn same_registry(a: &str, b: &str) -> bool {
    let canonical = |s: &str| {
        let s = s.trim().to_ascii_lowercase();
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(&s)
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .to_owned();
        match s.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => s,
        }
    };
    canonical(a) == canonical(b)
}

fn auth_files() -> Vec<PathBuf> {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(file) = env("KRUNBOX_AUTH_FILE") {
        return vec![file];
    }
    let home = env("HOME");
    let mut files = Vec::new();
    match (env("XDG_CONFIG_HOME"), &home) {
        (Some(config), _) => files.push(config.join("krunbox/auth.json")),
        (None, Some(home)) => files.push(home.join(".config/krunbox/auth.json")),
        _ => {}
    }
    match (env("DOCKER_CONFIG"), &home) {
        (Some(dir), _) => files.push(dir.join("config.json")),
        (None, Some(home)) => files.push(home.join(".docker/config.json")),
        _ => {}
    }
    files
}

/// Credentials for `registry` from one Docker-style config file (anonymous when it has none).
pub fn credentials_from_file(path: &Path, registry: &str) -> Result<Credentials, AuthError> {
    let invalid = |reason: String| AuthError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let data = std::fs::read(path).map_err(|source| AuthError::Io {
        path: path.to_owned(),
        source,
    })?;
    let file: ConfigFile = serde_json::from_slice(&data).map_err(|e| invalid(e.to_string()))?;
    let mut keys = vec![
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == DOCKER_HUB {
        keys.extend(
            [
                "https://index.docker.io/v1/",
                "index.docker.io",
                "registry-1.docker.io",
            ]
            .map(str::to_owned),
        );
    }
    let Some(entry) = keys.iter().find_map(|k| {
        file.auths
            .get(k)
            .or_else(|| file.auths.get(&format!("{k}/")))
    }) else {
        return Ok(Credentials::Anonymous);
    };
    if let Some(token) = &entry.identitytoken {
        return Ok(Credentials::Bearer(token.clone()));
    }
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Credentials::Basic {
            username: username.clone(),
            password: password.clone(),
        });
    }
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| invalid(format!("auth for {registry} is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| invalid(format!("auth for {registry} is not UTF-8")))?;
        let Some((username, password)) = decoded.split_once(':') else {
            return Err(invalid(format!(
                "auth for {registry} is not base64(user:password)"
            )));
        };
        return Ok(Credentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        });
    }
    Ok(Credentials::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_credentials_go_only_to_the_registry_named_with_them() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let basic = &[
            ("KRUNBOX_REGISTRY_USERNAME", "alice"),
            ("KRUNBOX_REGISTRY_PASSWORD", "s3cret"),
            (
                "KRUNBOX_REGISTRY_AUTH_FOR",
                "https://Registry.example:5000/",
            ),
        ];
        assert!(matches!(
            env_credentials("registry.example:5000", env(basic)).unwrap(),
            Some(Credentials::Basic { username, .. }) if username == "alice"
        ));
        assert_eq!(
            env_credentials("evil.example", env(basic)).unwrap(),
            None,
            "credentials for one registry must not reach another"
        );
        assert_eq!(
            env_credentials("registry.example:5001", env(basic)).unwrap(),
            None
        );
        let unscoped = &[("KRUNBOX_REGISTRY_TOKEN", "t0ken")];
        let err = env_credentials("evil.example", env(unscoped)).unwrap_err();
        assert!(
            err.to_string().contains("KRUNBOX_REGISTRY_AUTH_FOR"),
            "{err}"
        );
        assert!(!err.to_string().contains("t0ken"), "{err}");
        let hub = &[
            ("KRUNBOX_REGISTRY_TOKEN", "t0ken"),
            ("KRUNBOX_REGISTRY_AUTH_FOR", "index.docker.io"),
        ];
        assert_eq!(
            env_credentials(DOCKER_HUB, env(hub)).unwrap(),
            Some(Credentials::Bearer("t0ken".into()))
        );
        assert_eq!(env_credentials("ghcr.io", env(&[])).unwrap(), None);
    }

    #[test]
    fn reads_docker_config_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"username":"bob","password":"pw"}},"bad.io":{{"auth":"!!"}}}}}}"#
            ),
        )
        .unwrap();
        assert_eq!(
            credentials_from_file(&path, "127.0.0.1:5000").unwrap(),
            Credentials::Basic {
                username: "alice".into(),
                password: "s3cret".into()
            }
        );
        assert!(
            matches!(credentials_from_file(&path, "docker.io").unwrap(), Credentials::Basic { username, .. } if username == "bob")
        );
        assert_eq!(
            credentials_from_file(&path, "ghcr.io").unwrap(),
            Credentials::Anonymous
        );
        assert!(credentials_from_file(&path, "bad.io").is_err());
        assert!(
            !format!("{:?}", credentials_from_file(&path, "docker.io").unwrap()).contains("pw")
        );
    }
}
