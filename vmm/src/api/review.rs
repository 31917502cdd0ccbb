//! `GET /v1/sandboxes/{name}/changes`, `POST …/accept`, `POST …/reject`: a
//! `--workspace=review` sandbox's changes, as `krunbox diff`, `accept` and `reject` see them
//! ([`crate::review`]).

use axum::extract::Path;
use axum::Json;
use serde::Deserialize;

use super::error::{blocking, ApiError, JsonBody, Params};
use crate::review::changes::{self, Change};
use crate::review::{apply, ReviewError, ReviewStore};

impl From<ReviewError> for ApiError {
    fn from(err: ReviewError) -> Self {
        let message = err.to_string();
        match err {
            ReviewError::NotFound(_) => Self::NotFound(message),
            ReviewError::Conflicts(_) | ReviewError::GuestRunning(_) => Self::Conflict(message),
            ReviewError::Name(_) | ReviewError::NoSuchChange(_) | ReviewError::Workspace { .. } => {
                Self::BadRequest(message)
            }
            _ => Self::Internal(message),
        }
    }
}

/// The query of `GET …/changes`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// Add each change's unified diff (`patch`).
    #[serde(default)]
    pub patch: bool,
}

/// The body of `POST …/accept` and `…/reject`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceRequest {
    /// The paths (each with what is beneath it); all changes when empty.
    #[serde(default)]
    pub paths: Vec<String>,
}

fn to_json(list: &[Change]) -> serde_json::Value {
    serde_json::to_value(list).unwrap_or_default()
}

/// `GET /v1/sandboxes/{name}/changes`.
pub async fn list(
    Path(name): Path<String>,
    Params(query): Params<ChangesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let review = ReviewStore::new()?.open(&name)?;
        let all = changes::changes(&review)?;
        let listed: Vec<&Change> = all.iter().collect();
        Ok(Json(changes::to_json(&review, &listed, query.patch)?))
    })
    .await
}

/// `POST /v1/sandboxes/{name}/accept`.
pub async fn accept(
    Path(name): Path<String>,
    JsonBody(request): JsonBody<ChoiceRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let mut review = ReviewStore::new()?.open(&name)?;
        let done = apply::accept(&mut review, &request.paths)?;
        crate::review::settle(&review)?;
        Ok(Json(serde_json::json!({
            "accepted": to_json(&done.accepted),
            "left_out": to_json(&done.left_out),
        })))
    })
    .await
}

/// `POST /v1/sandboxes/{name}/reject`.
pub async fn reject(
    Path(name): Path<String>,
    JsonBody(request): JsonBody<ChoiceRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let mut review = ReviewStore::new()?.open(&name)?;
        let done = apply::reject(&mut review, &request.paths)?;
        crate::review::settle(&review)?;
        Ok(Json(serde_json::json!({ "rejected": to_json(&done) })))
    })
    .await
}
