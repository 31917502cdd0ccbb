//! `/v1/images`: list, pull (with progress events) and remove images of the store.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::error::{blocking, ApiError, JsonBody, Params};
use crate::cli::images::pull_image;
use crate::guest::rootfs::open_store;

/// `GET /v1/images`: what `krunbox images` lists.
pub async fn list() -> Result<Json<serde_json::Value>, ApiError> {
    blocking(|| {
        let store = open_store::<crate::cli::images::ImagesError>()?;
        let images = store
            .list_images()
            .map_err(crate::cli::images::ImagesError::from)?;
        let images = images
            .iter()
            .map(|image| {
                serde_json::json!({
                    "name": image.display_name(),
                    "id": image.id(),
                    "manifest": image.manifest.to_string(),
                    "platform": image.platform.to_string(),
                    "size": image.size,
                    "stored_at": image.stored_at,
                })
            })
            .collect();
        Ok(Json(serde_json::Value::Array(images)))
    })
    .await
}

/// `POST /v1/images/pull`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// A registry reference (or a local OCI layout, OCI archive or `docker save` tarball).
    pub reference: String,
    /// OS/ARCH[/VARIANT] to pick from a multi-platform image.
    pub platform: Option<String>,
}

/// `POST /v1/images/pull`: newline-delimited JSON, one object per event: `download`,
/// `progress`, `done`, `present` per blob (`krunbox_image::pull::PullEvent`), and last either
/// `{"event":"pulled", "name", "id"}` or `{"event":"error", "kind", "message"}`. A bad
/// reference is refused before the stream starts (400).
pub async fn pull(JsonBody(request): JsonBody<PullRequest>) -> Result<Response, ApiError> {
    krunbox_image::source::Source::parse(&request.reference)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let platform = request
        .platform
        .as_deref()
        .map(krunbox_image::platform::Platform::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let (lines, body) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    let pulling = tokio::task::spawn_blocking(move || {
        pull_image(&request.reference, platform, false, Some(events))
    });
    tokio::spawn(async move {
        while let Some(event) = received.recv().await {
            let line = serde_json::to_string(&event).unwrap_or_default() + "\n";
            if lines.send(Ok(line)).await.is_err() {
                // The client left; the pull goes on and lands in the store.
                return;
            }
        }
        let last = match pulling.await {
            Ok(Ok(record)) => serde_json::json!({
                "event": "pulled", "name": record.display_name(), "id": record.id(),
            }),
            Ok(Err(err)) => ApiError::from(err).event(),
            Err(err) => ApiError::Internal(format!("the pull failed: {err}")).event(),
        };
        let _ = lines.send(Ok(last.to_string() + "\n")).await;
    });
    let stream = tokio_stream_from(body);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A stream of a channel's items.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `?reference=` of remove.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// The image, as `krunbox rmi` takes it (name or ID prefix).
    pub reference: String,
}

/// `DELETE /v1/images?reference=`: `krunbox rmi`.
pub async fn remove(
    Params(query): Params<RemoveQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let store = open_store::<crate::cli::images::ImagesError>()?;
        let (record, report) = store
            .remove_image(&query.reference)
            .map_err(crate::cli::images::ImagesError::from)?;
        Ok(Json(serde_json::json!({
            "name": record.display_name(),
            "freed_bytes": report.freed_bytes,
        })))
    })
    .await
}
