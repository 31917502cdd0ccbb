//! `krunbox serve`: krunbox as an HTTP API, for programs in any language (the Node.js and
//! Python SDKs in `sdk/` are its clients) — sandboxes, exec over a WebSocket, files and
//! images. The routes are [`ROUTES`]; `api/openapi.json` documents each, and a test keeps the
//! two equal.
//!
//! Every operation is the CLI's own code: a create request becomes `krunbox create`'s
//! arguments ([`sandboxes`]), stop is `krunbox stop`'s lifecycle call, and so on. Whoever may
//! connect may do what the user at the CLI may (see [`auth`]).

pub mod agent;
pub mod auth;
pub mod error;
pub mod exec;
pub mod files;
pub mod images;
pub mod mcp;
pub mod review;
pub mod sandboxes;

use std::sync::Arc;

use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};

use error::ApiError;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// The server's version.
    Version,
    /// Every sandbox.
    ListSandboxes,
    /// Create (and start) one.
    CreateSandbox,
    /// One sandbox's spec and state.
    InspectSandbox,
    /// Remove one.
    RemoveSandbox,
    /// Boot one.
    StartSandbox,
    /// Stop one.
    StopSandbox,
    /// Freeze one.
    PauseSandbox,
    /// Thaw one.
    ResumeSandbox,
    /// Its CPU and memory.
    SandboxStats,
    /// Its console, monitor or network log.
    SandboxLogs,
    /// A `--workspace=review` sandbox's changes.
    ListChanges,
    /// Accept them into the workspace.
    AcceptChanges,
    /// Reject them (the copy put back).
    RejectChanges,
    /// A command, over a WebSocket.
    Exec,
    /// A file into it.
    Upload,
    /// A file out of it.
    Download,
    /// The store's images.
    ListImages,
    /// Pull one.
    PullImage,
    /// Remove one.
    RemoveImage,
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path, with `{name}` for a sandbox's name.
    pub path: &'static str,
    /// What it does.
    pub operation: Operation,
}

const fn route(method: Method, path: &'static str, operation: Operation) -> Route {
    Route {
        method,
        path,
        operation,
    }
}

/// Every route of the API (and of `api/openapi.json`).
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/v1/version", Operation::Version),
    route(Method::GET, "/v1/sandboxes", Operation::ListSandboxes),
    route(Method::POST, "/v1/sandboxes", Operation::CreateSandbox),
    route(
        Method::GET,
        "/v1/sandboxes/{name}",
        Operation::InspectSandbox,
    ),
    route(
        Method::DELETE,
        "/v1/sandboxes/{name}",
        Operation::RemoveSandbox,
    ),
    route(
        Method::POST,
        "/v1/sandboxes/{name}/start",
        Operation::StartSandbox,
    ),
    route(
        Method::POST,
        "/v1/sandboxes/{name}/stop",
        Operation::StopSandbox,
    ),
    route(
        Method::POST,
        "/v1/sandboxes/{name}/pause",
        Operation::PauseSandbox,
    ),
    route(
        Method::POST,
        "/v1/sandboxes/{name}/resume",
        Operation::ResumeSandbox,
    ),
    route(
        Method::GET,
        "/v1/sandboxes/{name}/stats",
        Operation::SandboxStats,
    ),
    route(
        Method::GET,
        "/v1/sandboxes/{name}/logs",
        Operation::SandboxLogs,
    ),
    route(
        Method::GET,
        "/v1/sandboxes/{name}/changes",
        Operation::ListChanges,
    ),
    route(
        Method::POST,
        "/v1/sandboxes/{name}/accept",
        Operation::AcceptChanges,
    ),
    route(
        Method::POST,
        "/v1/sandboxes/{name}/reject",
        Operation::RejectChanges,
    ),
    route(Method::GET, "/v1/sandboxes/{name}/exec", Operation::Exec),
    route(Method::PUT, "/v1/sandboxes/{name}/files", Operation::Upload),
    route(
        Method::GET,
        "/v1/sandboxes/{name}/files",
        Operation::Download,
    ),
    route(Method::GET, "/v1/images", Operation::ListImages),
    route(Method::POST, "/v1/images/pull", Operation::PullImage),
    route(Method::DELETE, "/v1/images", Operation::RemoveImage),
];

fn handler(operation: Operation, filter: MethodFilter) -> MethodRouter {
    use Operation::*;
    match operation {
        Version => on(filter, version),
        ListSandboxes => on(filter, sandboxes::list),
        CreateSandbox => on(filter, sandboxes::create_handler),
        InspectSandbox => on(filter, sandboxes::inspect),
        RemoveSandbox => on(filter, sandboxes::remove_handler),
        StartSandbox => on(filter, sandboxes::start),
        StopSandbox => on(filter, sandboxes::stop_handler),
        PauseSandbox => on(filter, sandboxes::pause),
        ResumeSandbox => on(filter, sandboxes::resume),
        SandboxStats => on(filter, sandboxes::stats),
        SandboxLogs => on(filter, sandboxes::logs),
        ListChanges => on(filter, review::list),
        AcceptChanges => on(filter, review::accept),
        RejectChanges => on(filter, review::reject),
        Exec => on(filter, exec::handler),
        Upload => on(filter, files::upload),
        Download => on(filter, files::download),
        ListImages => on(filter, images::list),
        PullImage => on(filter, images::pull),
        RemoveImage => on(filter, images::remove),
    }
}

fn filter(method: &Method) -> MethodFilter {
    match *method {
        Method::POST => MethodFilter::POST,
        Method::PUT => MethodFilter::PUT,
        Method::DELETE => MethodFilter::DELETE,
        _ => MethodFilter::GET,
    }
}

/// The API's router, every request checked by `access`.
pub fn router(access: auth::Access) -> Router {
    let mut paths: Vec<(&str, MethodRouter)> = Vec::new();
    for route in ROUTES {
        let methods = handler(route.operation, filter(&route.method));
        match paths.iter_mut().find(|(path, _)| *path == route.path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(methods),
            None => paths.push((route.path, methods)),
        }
    }
    let router = paths
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        });
    router
        .fallback(|| async {
            ApiError::NotFound("no such API route (see api/openapi.json)".into())
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(access),
            auth::check,
        ))
}

/// `GET /v1/version`.
async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "api": "v1",
        "protocol_generation": krunbox_protocol::generation::CURRENT_GENERATION,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document, which clients are written against.
    const OPENAPI: &str = include_str!("../../../api/openapi.json");

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_owned()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn the_router_takes_every_route() {
        // Merging methods of one path must not panic, and every path must be routed once.
        let _ = router(auth::Access::open());
    }
}
