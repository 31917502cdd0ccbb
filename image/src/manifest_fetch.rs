//! Fetching manifests and indexes from a registry with a size limit.
//!
//! oci-client reads a manifest response wholly into memory, so a hostile registry could
//! answer a pull with gigabytes. Manifests are therefore fetched here with reqwest (the client
//! oci-client itself uses), authenticated with what oci-client negotiated for the repository,
//! and refused past [`MAX_JSON_BLOB`]: by `Content-Length` before reading, by counting while
//! reading (a registry may send no length, or lie). Blobs still go through oci-client's
//! streaming download, which the puller bounds by the descriptor's size.

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;

use crate::limits::MAX_JSON_BLOB;
use crate::manifest::ACCEPTED_MANIFEST_TYPES;

/// Why a manifest could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ManifestFetchError {
    /// Authenticating with the registry failed.
    #[error(transparent)]
    Auth(#[from] OciDistributionError),
    /// The HTTP exchange failed.
    #[error("fetching manifest {url}: {source}")]
    Http {
        /// What was fetched.
        url: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("fetching manifest {url}: registry answered {status}: {body}")]
    Status {
        /// What was fetched.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer (registries explain errors in JSON).
        body: String,
    },
    /// The manifest is larger than krunbox reads.
    #[error(
        "manifest {url} is larger than the {MAX_JSON_BLOB}-byte limit for manifests and indexes"
    )]
    TooLarge {
        /// What was fetched.
        url: String,
    },
}

/// Fetches manifests of one repository.
pub(crate) struct ManifestFetcher {
    http: reqwest::Client,
    scheme: &'static str,
    authorization: Option<String>,
}

impl ManifestFetcher {
    /// Authenticates for pulling `reference`'s repository through `client` (which keeps the
    /// token for its blob downloads too).
    pub(crate) async fn new(
        client: &oci_client::Client,
        reference: &oci_client::Reference,
        auth: &RegistryAuth,
        insecure: bool,
    ) -> Result<Self, ManifestFetchError> {
        use base64::Engine as _;
        let token = client
            .auth(reference, auth, RegistryOperation::Pull)
            .await?;
        let authorization = match (token, auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, RegistryAuth::Basic(username, password)) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            _ => None,
        };
        let url = format!("registry {}", reference.resolve_registry());
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|source| ManifestFetchError::Http { url, source })?;
        Ok(Self {
            http,
            scheme: if insecure { "http" } else { "https" },
            authorization,
        })
    }

    /// The manifest or index `reference` names (by digest when it has one), at most
    /// [`MAX_JSON_BLOB`] bytes.
    pub(crate) async fn fetch(
        &self,
        reference: &oci_client::Reference,
    ) -> Result<Vec<u8>, ManifestFetchError> {
        let target = reference.digest().or(reference.tag()).unwrap_or("latest");
        let url = format!(
            "{}://{}/v2/{}/manifests/{target}",
            self.scheme,
            reference.resolve_registry(),
            reference.repository()
        );
        let http_err = |source| ManifestFetchError::Http {
            url: url.clone(),
            source,
        };
        let mut request = self
            .http
            .get(&url)
            .header(http::header::ACCEPT, ACCEPTED_MANIFEST_TYPES.join(", "));
        if let Some(authorization) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        let mut response = request.send().await.map_err(http_err)?;
        let too_large = || ManifestFetchError::TooLarge { url: url.clone() };
        if response.content_length().is_some_and(|n| n > MAX_JSON_BLOB) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_err)? {
            if (body.len() + chunk.len()) as u64 > MAX_JSON_BLOB {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let status = response.status();
        if !status.is_success() {
            return Err(ManifestFetchError::Status {
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        Ok(body)
    }
}
