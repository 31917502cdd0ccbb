//! Errors as the API answers them: an HTTP status and `{"error": {"kind", "message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::cli::images::ImagesError;
use crate::cli::sandbox::SandboxCliError;
use crate::sandbox::SandboxError;
use krunbox_image::pull::PullError;
use krunbox_image::registry_http::RegistryError;
use krunbox_image::source::PrepareError;

/// Why a request failed, by what the client can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or names impossible settings (400).
    #[error("{0}")]
    BadRequest(String),
    /// No or a wrong bearer token (401).
    #[error(
        "this server needs `Authorization: Bearer <token>` (the token `krunbox serve` was given)"
    )]
    Unauthorized,
    /// A browser page (a request with an `Origin` header) (403).
    #[error("requests from web pages (with an Origin header) are refused")]
    CrossOrigin,
    /// No such sandbox, image or file (404).
    #[error("{0}")]
    NotFound(String),
    /// The sandbox is in the wrong state, or the name is taken (409).
    #[error("{0}")]
    Conflict(String),
    /// Anything else (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::CrossOrigin => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `kind` field: the variant, for programs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::CrossOrigin => "cross_origin",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Internal(_) => "internal",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "kind": self.kind(), "message": self.to_string() } })
    }

    /// The last event of a stream that failed (a pull's).
    pub fn event(&self) -> serde_json::Value {
        serde_json::json!({ "event": "error", "kind": self.kind(), "message": self.to_string() })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal(_)) {
            tracing::warn!(error = %self, "request failed");
        }
        (self.status(), axum::Json(self.body())).into_response()
    }
}

impl From<SandboxError> for ApiError {
    fn from(err: SandboxError) -> Self {
        let message = err.to_string();
        match err {
            SandboxError::Name(_) => Self::BadRequest(message),
            SandboxError::NotFound(_) => Self::NotFound(message),
            SandboxError::Exists(_)
            | SandboxError::AlreadyRunning(_)
            | SandboxError::Running(_)
            | SandboxError::NotRunning { .. }
            | SandboxError::Paused(_) => Self::Conflict(message),
            _ => Self::Internal(message),
        }
    }
}

impl From<SandboxCliError> for ApiError {
    fn from(err: SandboxCliError) -> Self {
        match err {
            SandboxCliError::Sandbox(err) => err.into(),
            SandboxCliError::Usage(_)
            | SandboxCliError::Command(_)
            | SandboxCliError::Shares(_)
            | SandboxCliError::SshAgent(_)
            | SandboxCliError::Network(_)
            | SandboxCliError::User(_) => Self::BadRequest(err.to_string()),
            SandboxCliError::Image(ref image)
                if matches!(**image, crate::guest::rootfs::ImageError::Source(_)) =>
            {
                Self::BadRequest(err.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<ImagesError> for ApiError {
    fn from(err: ImagesError) -> Self {
        match err {
            ImagesError::Source(_) | ImagesError::NotAnImage(_) => {
                Self::BadRequest(err.to_string())
            }
            ImagesError::Store(krunbox_image::store::StoreError::ImageNotFound(_)) => {
                Self::NotFound(err.to_string())
            }
            ImagesError::Store(krunbox_image::store::StoreError::Ambiguous(_)) => {
                Self::BadRequest(err.to_string())
            }
            ImagesError::Prepare(PrepareError::Pull(PullError::Registry {
                source: RegistryError::Status { status: 404, .. },
                ..
            })) => Self::NotFound(err.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<krunbox_protocol::client::ClientError> for ApiError {
    fn from(err: krunbox_protocol::client::ClientError) -> Self {
        use krunbox_protocol::messages::ErrorKind;
        let message = err.to_string();
        if matches!(
            err,
            krunbox_protocol::client::ClientError::MissingFeature { .. }
                | krunbox_protocol::client::ClientError::InvalidRequest(_)
        ) {
            // What this sandbox's agent cannot do is the request's problem, not the server's.
            return Self::BadRequest(message);
        }
        match err.remote_kind() {
            Some(ErrorKind::NotFound) => Self::NotFound(message),
            Some(ErrorKind::BadRequest)
            | Some(ErrorKind::PermissionDenied)
            | Some(ErrorKind::OutsideRoot)
            | Some(ErrorKind::AlreadyExists) => Self::BadRequest(message),
            _ => Self::Internal(message),
        }
    }
}

/// Runs blocking store and lifecycle work off the async threads.
pub async fn blocking<T, F>(job: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| ApiError::Internal(format!("a worker failed: {e}")))?
}

/// A JSON request body; a malformed one is a [`ApiError::BadRequest`] in the API's error
/// shape (axum's own rejection is plain text).
pub struct JsonBody<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// Query parameters, refused as [`JsonBody`] refuses a body.
pub struct Params<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}
