//! `/v1/sandboxes/{name}/files?path=`: a file into (`PUT`) or out of (`GET`) a running
//! sandbox, streamed both ways: neither end holds the whole file.

use axum::body::Body;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio_util::io::{ReaderStream, StreamReader};

use super::agent::connect;
use super::error::{ApiError, Params};

/// The buffer between the agent and the HTTP body of a download.
const PIPE_BYTES: usize = 256 * 1024;

/// `?path=&mode=` of the file routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// The absolute guest path.
    pub path: String,
    /// Upload: the new file's mode, octal (default `644`).
    pub mode: Option<String>,
}

fn absolute(path: &str) -> Result<(), ApiError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "path {path:?}: give an absolute guest path"
        )))
    }
}

/// Permission bits given in octal (`644`), default 0644.
pub fn mode(text: Option<&str>) -> Result<u32, ApiError> {
    let Some(text) = text else { return Ok(0o644) };
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "mode {text:?}: give permission bits in octal, e.g. 644"
            ))
        })
}

/// `PUT /v1/sandboxes/{name}/files?path=P[&mode=M]`: the body becomes the file at P (it
/// appears only once complete; parents are created).
pub async fn upload(
    Path(name): Path<String>,
    Params(query): Params<FileQuery>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    absolute(&query.path)?;
    let mode = mode(query.mode.as_deref())?;
    let (_, client) = connect(&name).await?;
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let bytes = client.put(reader, query.path.as_str(), mode).await?;
    Ok(Json(
        serde_json::json!({ "path": query.path, "bytes": bytes }),
    ))
}

/// `GET /v1/sandboxes/{name}/files?path=P`: the file's bytes, streamed. An error before the
/// first byte (no such file, a directory, no permission) is an error answer; one after it
/// aborts the body, so the client sees a failed transfer, never a short file that looks whole.
pub async fn download(
    Path(name): Path<String>,
    Params(query): Params<FileQuery>,
) -> Result<Response, ApiError> {
    absolute(&query.path)?;
    let (_, client) = connect(&name).await?;
    let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
    let path = query.path.clone();
    let mut reading = tokio::spawn(async move {
        let mut writer = writer;
        client.get(path.as_str(), &mut writer).await.map(drop)
    });
    let mut reader = tokio::io::BufReader::new(reader);
    // Wait for the first bytes, or for the read to end before them.
    let finished = tokio::select! {
        biased;
        result = &mut reading => Some(result),
        _ = tokio::io::AsyncBufReadExt::fill_buf(&mut reader) => None,
    };
    // No bytes but the end (an empty file, or a failed read): the read's own result decides.
    let finished = match finished {
        Some(result) => Some(result),
        None if reader.buffer().is_empty() => Some((&mut reading).await),
        None => None,
    };
    // The read still to check after the bytes: none if it already ended well.
    let unfinished = match finished {
        Some(Ok(Ok(()))) => None,
        Some(Ok(Err(err))) => return Err(err.into()),
        Some(Err(err)) => return Err(ApiError::Internal(format!("the read failed: {err}"))),
        None => Some(reading),
    };
    let ending = async move {
        match unfinished?.await {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(std::io::Error::other(err.to_string())),
            Err(err) => Some(std::io::Error::other(err.to_string())),
        }
    };
    // After the bytes, the read's own result: an error ends the body as a failure.
    let tail = futures_util::stream::once(ending)
        .filter_map(|error| async move { error.map(Err::<bytes::Bytes, _>) });
    let body = ReaderStream::new(reader).chain(tail);
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response())
}
