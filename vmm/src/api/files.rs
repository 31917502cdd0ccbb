//! `/v1/sandboxes/{name}/files?path=`: a file into (`PUT`) or out of (`GET`) a running
//! sandbox, streamed both ways: neither end holds the whole file.

use axum::body::Body;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
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

fn mode(text: Option<&str>) -> Result<u32, ApiError> {
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

/// `GET /v1/sandboxes/{name}/files?path=P`: the file's bytes (`Content-Length` from its
/// stat when the read begins).
pub async fn download(
    Path(name): Path<String>,
    Params(query): Params<FileQuery>,
) -> Result<Response, ApiError> {
    absolute(&query.path)?;
    let (_, client) = connect(&name).await?;
    let stat = client.stat(query.path.as_str()).await?;
    if stat.file_type() == krunbox_protocol::messages::FileType::Dir {
        return Err(ApiError::BadRequest(format!(
            "{} is a directory: download its files one by one",
            query.path
        )));
    }
    let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
    let path = query.path.clone();
    tokio::spawn(async move {
        let mut writer = writer;
        if let Err(err) = client.get(path.as_str(), &mut writer).await {
            // The body ends early; the client sees fewer bytes than Content-Length.
            tracing::warn!(%path, %err, "a download failed midway");
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, stat.size.to_string()),
        ],
        Body::from_stream(ReaderStream::new(reader)),
    )
        .into_response())
}
