//! Speaking to a registry for a pull: authentication, manifests and blobs, every body bounded.
//!
//! oci-client reads token responses, manifests and error bodies wholly into memory, so a
//! hostile registry (or the token server it names) could answer with gigabytes. Pulls are
//! therefore spoken here with reqwest (the client oci-client itself uses):
//!
//! 1. [`RegistrySession::open`] asks `GET /v2/`. A `Bearer` challenge is answered at the realm
//!    it names ([`crate::registry_token`]), a `Basic` one with the credentials; the resulting
//!    `Authorization` is sent with every later request of the session.
//! 2. [`RegistrySession::manifest`] reads at most [`MAX_JSON_BLOB`]: refused by
//!    `Content-Length` before reading, and by counting while reading (a registry may send no
//!    length, or lie).
//! 3. [`RegistrySession::blob`] streams a blob; the puller bounds it by its descriptor's size
//!    and checks its digest. Redirects (registries send blobs from a CDN) are followed, and
//!    reqwest drops the `Authorization` header when one leaves the registry's origin.
//!
//! Error answers are read up to [`MAX_ERROR_BODY`] for the message. Every request has a
//! connect timeout and a read timeout, and every bounded body an overall one, so a registry
//! that stops sending, or sends a byte a minute, cannot hold a pull.

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::auth::Credentials;
use crate::digest::Digest;
use crate::limits::{MAX_ERROR_BODY, MAX_JSON_BLOB};
use crate::manifest::ACCEPTED_MANIFEST_TYPES;
use crate::reference::Reference;
use crate::registry_token::{self, BearerChallenge, TokenError};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a registry may go without sending anything while krunbox waits for bytes.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a bounded body (a manifest, a token, an error answer) may take in all.
const WHOLE_BODY_TIMEOUT: Duration = Duration::from_secs(300);

/// What a session is for: the token's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read the repository.
    Pull,
    /// Read and write it.
    Push,
}

impl Access {
    fn scope_actions(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Push => "pull,push",
        }
    }
}

/// Why speaking to the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The HTTP exchange failed (connection, TLS, timeout).
    #[error("{what} {url}: {source}")]
    Http {
        /// What was asked for.
        what: &'static str,
        /// Where.
        url: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("{what} {url}: registry answered {status}: {body}")]
    Status {
        /// What was asked for.
        what: &'static str,
        /// Where.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer (registries explain errors in JSON).
        body: String,
    },
    /// The answer is larger than krunbox reads.
    #[error("{what} {url} is larger than the {limit}-byte limit")]
    TooLarge {
        /// What was asked for.
        what: &'static str,
        /// Where.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// Getting a bearer token failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A small answer that took too long to arrive.
    #[error("{what} {url}: the answer did not arrive within {waited:?}")]
    Slow {
        /// What was asked for.
        what: &'static str,
        /// Where.
        url: String,
        /// How long krunbox waited.
        waited: Duration,
    },
}

/// An authenticated conversation with one repository of one registry.
pub struct RegistrySession {
    http: reqwest::Client,
    /// `scheme://registry/v2/`.
    root: String,
    /// `scheme://registry/v2/repository`.
    base: String,
    /// What a token expired in the middle of a long pull is had again with.
    login: Login,
    /// The `Authorization` header and the bearer token in it, if any.
    auth: std::sync::Mutex<(Option<String>, Option<String>)>,
}

/// What the session authenticated with.
struct Login {
    reference: Reference,
    credentials: Credentials,
    access: Access,
    insecure: bool,
}

impl RegistrySession {
    /// Authenticates for `access` to `reference`'s repository. `insecure` speaks plain HTTP.
    pub async fn open(
        reference: &Reference,
        credentials: &Credentials,
        access: Access,
        insecure: bool,
    ) -> Result<Self, RegistryError> {
        let scheme = if insecure { "http" } else { "https" };
        let root = format!("{scheme}://{}/v2/", reference.api_host());
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|source| RegistryError::Http {
                what: "connecting to registry",
                url: root.clone(),
                source,
            })?;
        let auth =
            Self::authenticate(&http, &root, reference, credentials, access, insecure).await?;
        Ok(Self {
            http,
            base: format!("{root}{}", reference.repository),
            root,
            login: Login {
                reference: reference.clone(),
                credentials: credentials.clone(),
                access,
                insecure,
            },
            auth: std::sync::Mutex::new(auth),
        })
    }

    fn auth(&self) -> std::sync::MutexGuard<'_, (Option<String>, Option<String>)> {
        // Two strings replaced whole: a poisoned lock still holds a usable value.
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a new token (registries' tokens last minutes; a pull of large layers lasts
    /// longer); whether the session has a new `Authorization`.
    async fn reauthenticate(&self) -> Result<bool, RegistryError> {
        if matches!(self.login.credentials, Credentials::Bearer(_)) {
            return Ok(false);
        }
        let login = &self.login;
        let fresh = Self::authenticate(
            &self.http,
            &self.root,
            &login.reference,
            &login.credentials,
            login.access,
            login.insecure,
        )
        .await?;
        let changed = fresh.1.is_some();
        *self.auth() = fresh;
        Ok(changed)
    }

    async fn authenticate(
        http: &reqwest::Client,
        root: &str,
        reference: &Reference,
        credentials: &Credentials,
        access: Access,
        insecure: bool,
    ) -> Result<(Option<String>, Option<String>), RegistryError> {
        if let Credentials::Bearer(token) = credentials {
            return Ok((Some(format!("Bearer {token}")), Some(token.clone())));
        }
        let response = http
            .get(root)
            .send()
            .await
            .map_err(|source| RegistryError::Http {
                what: "asking registry",
                url: root.to_owned(),
                source,
            })?;
        let challenge = response
            .headers()
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(BearerChallenge::parse);
        // The body of the answer to `/v2/` is never read.
        drop(response);
        if let Some(challenge) = challenge {
            let scope = format!(
                "repository:{}:{}",
                reference.repository,
                access.scope_actions()
            );
            let token =
                registry_token::request(http, &challenge, &scope, credentials, insecure).await?;
            return Ok((Some(format!("Bearer {token}")), Some(token)));
        }
        let basic = match credentials {
            Credentials::Basic { username, password } => {
                use base64::Engine as _;
                let pair = format!("{username}:{password}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            _ => None,
        };
        Ok((basic, None))
    }

    /// The bearer token this session sends, if any (handed to oci-client for pushes).
    pub fn bearer_token(&self) -> Option<String> {
        self.auth().1.clone()
    }

    /// The manifest or index `reference` names (by digest when it has one), at most
    /// [`MAX_JSON_BLOB`] bytes.
    pub async fn manifest(&self, reference: &Reference) -> Result<Vec<u8>, RegistryError> {
        let target = reference
            .digest
            .as_ref()
            .map(Digest::to_string)
            .or_else(|| reference.tag.clone())
            .unwrap_or_else(|| "latest".to_owned());
        let url = format!("{}/manifests/{target}", self.base);
        let what = "fetching manifest";
        let request = self
            .http
            .get(&url)
            .header(http::header::ACCEPT, ACCEPTED_MANIFEST_TYPES.join(", "));
        let response = self.send(request, what, &url).await?;
        read_bounded(response, MAX_JSON_BLOB, what, &url).await
    }

    /// Starts downloading blob `digest`; the stream ends with the blob's last byte.
    pub async fn blob(
        &self,
        digest: &Digest,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>>, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base);
        let response = self
            .send(self.http.get(&url), "downloading blob", &url)
            .await?;
        Ok(response.bytes_stream())
    }

    /// Sends `request` with the session's authorization; an error status becomes
    /// [`RegistryError::Status`] with the start of its body. A 401 to a bearer token (it
    /// expired) is answered once with a new token.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &'static str,
        url: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let again = request.try_clone();
        let mut response = self.send_once(request, what, url).await?;
        if response.status() == http::StatusCode::UNAUTHORIZED && self.auth().1.is_some() {
            if let Some(again) = again {
                if self.reauthenticate().await? {
                    tracing::debug!(url, "the registry token expired; asked for a new one");
                    response = self.send_once(again, what, url).await?;
                }
            }
        }
        error_for_status(response, what, url).await
    }

    async fn send_once(
        &self,
        mut request: reqwest::RequestBuilder,
        what: &'static str,
        url: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let authorization = self.auth().0.clone();
        if let Some(authorization) = authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        request.send().await.map_err(|source| RegistryError::Http {
            what,
            url: url.to_owned(),
            source,
        })
    }
}

/// `response` if its status is a success; otherwise the error, with at most
/// [`MAX_ERROR_BODY`] bytes of its body read for the message.
pub(crate) async fn error_for_status(
    response: reqwest::Response,
    what: &'static str,
    url: &str,
) -> Result<reqwest::Response, RegistryError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = match read_bounded(response, MAX_ERROR_BODY, what, url).await {
        Ok(body) => String::from_utf8_lossy(&body).chars().take(300).collect(),
        Err(RegistryError::TooLarge { .. }) => "(a body too large to show)".to_owned(),
        Err(other) => return Err(other),
    };
    Err(RegistryError::Status {
        what,
        url: url.to_owned(),
        status: status.as_u16(),
        body,
    })
}

/// Reads `response`'s body, refusing it past `limit` bytes: by its `Content-Length` before
/// reading anything, and by counting while reading.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: u64,
    what: &'static str,
    url: &str,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        what,
        url: url.to_owned(),
        limit,
    };
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|source| RegistryError::Http {
                what,
                url: url.to_owned(),
                source,
            })?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    // The read timeout bounds each wait; this bounds a registry that sends a byte a minute.
    tokio::time::timeout(WHOLE_BODY_TIMEOUT, read)
        .await
        .map_err(|_| RegistryError::Slow {
            what,
            url: url.to_owned(),
            waited: WHOLE_BODY_TIMEOUT,
        })?
}
