//! The HTTP/1.1 side of an intercepted connection (see [`super::intercept`] for the whole
//! path): each request checked against the verified server name, the placeholders replaced
//! by the values in its header values, and the values put back as placeholders in the
//! response's.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tracing::debug;

/// The request checks and header rewriting of an intercepted connection, on a guest's `host`
/// and `authorization` header values (for the fuzzer): whether the request would be sent
/// for `api.test`, and the rewritten `authorization`, which must carry `value` wherever the
/// placeholder was and never the placeholder where a value went.
pub fn rewrite_for_fuzzing(host: &[u8], authorization: &[u8]) -> (bool, Option<Vec<u8>>) {
    let authority = Authority {
        name: "api.test".into(),
        port: super::HTTPS_PORT,
    };
    let sent = std::str::from_utf8(host).is_ok_and(|h| authority.is(h));
    let Ok(value) = HeaderValue::from_bytes(authorization) else {
        return (sent, None);
    };
    let mut headers = HeaderMap::new();
    headers.insert(hyper::header::AUTHORIZATION, value);
    let host_value = HeaderValue::from_bytes(host).ok();
    if let Some(host) = &host_value {
        headers.insert(hyper::header::HOST, host.clone());
    }
    put_values(
        &mut headers,
        "krunbox-secret-KEY-placeholder",
        "fuzz-secret-value",
    );
    assert_eq!(
        headers.get(hyper::header::HOST),
        host_value.as_ref(),
        "Host is never rewritten"
    );
    (
        sent,
        headers
            .get(hyper::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec()),
    )
}

/// The secrets of one intercepted connection: (placeholder, value), longest value first.
pub(super) type Placeholders = Arc<Vec<(String, String)>>;

/// Request headers a placeholder is never replaced in: those a server echoes or builds URLs
/// from (so the value would come back), and the message's framing.
pub const CARRIERS: &[&str] = &[
    "host",
    "referer",
    "origin",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "via",
    "user-agent",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "te",
    "trailer",
    "connection",
    "upgrade",
    "expect",
];

/// Response headers the values are not looked for in: the framing, which a short match
/// could corrupt.
const FRAMING: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "connection",
];
type Body = Either<Incoming, Full<Bytes>>;

pub(super) async fn forward_http<G, S>(
    guest: G,
    server: S,
    authority: Authority,
    secrets: Placeholders,
) -> Result<(), hyper::Error>
where
    G: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(server)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            debug!(%err, "an intercepted connection's server side ended");
        }
    });
    let sender = Arc::new(Mutex::new(sender));
    let authority = Arc::new(authority);
    let service = hyper::service::service_fn(move |request| {
        forward_request(
            request,
            Arc::clone(&sender),
            Arc::clone(&authority),
            Arc::clone(&secrets),
        )
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(guest), service)
        .await
}

/// The server a connection was verified for: the name (lowercase, no trailing dot) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Authority {
    pub(super) name: String,
    pub(super) port: u16,
}

impl Authority {
    /// Whether `host` (a `Host` value or a URI's authority: `name[:port]`) names it.
    fn is(&self, host: &str) -> bool {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) if !name.ends_with(']') || name.starts_with('[') => {
                match port.parse::<u16>() {
                    Ok(port) => (name, port),
                    Err(_) => return false,
                }
            }
            _ => (host, super::HTTPS_PORT),
        };
        port == self.port && name.trim_end_matches('.').eq_ignore_ascii_case(&self.name)
    }
}

/// Why a request is not forwarded, if it is not: its answer.
fn refusal(request: &Request<Incoming>, authority: &Authority) -> Option<Response<Body>> {
    let answer = |status: StatusCode, why: &str| {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!(
            "krunbox gateway: {why}\n"
        )))));
        *response.status_mut() = status;
        // The client learns the connection is not for this; it ends here.
        response
            .headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        Some(response)
    };
    if request.method() == hyper::Method::TRACE {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "TRACE is not forwarded where secrets go",
        );
    }
    if request.method() == hyper::Method::CONNECT
        || request.headers().contains_key(hyper::header::UPGRADE)
    {
        return answer(
            StatusCode::NOT_IMPLEMENTED,
            "upgrades are not supported on connections that carry secrets",
        );
    }
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok());
    let uri_authority = request.uri().authority().map(|a| a.as_str());
    let names_it = |h: Option<&str>| h.is_none_or(|h| authority.is(h));
    if host.is_none() || !names_it(host) || !names_it(uri_authority) {
        return answer(
            StatusCode::MISDIRECTED_REQUEST,
            "this connection carries requests for its TLS server name only",
        );
    }
    None
}

async fn forward_request(
    mut request: Request<Incoming>,
    sender: Arc<Mutex<hyper::client::conn::http1::SendRequest<Incoming>>>,
    authority: Arc<Authority>,
    secrets: Placeholders,
) -> Result<Response<Body>, Infallible> {
    if let Some(refused) = refusal(&request, &authority) {
        return Ok(refused);
    }
    // Origin-form, as the server expects from a client.
    if request.uri().authority().is_some() {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if let Ok(uri) = path.parse() {
            *request.uri_mut() = uri;
        }
    }
    for (placeholder, value) in secrets.iter() {
        put_values(request.headers_mut(), placeholder, value);
    }
    let response = {
        let mut sender = sender.lock().await;
        match sender.ready().await {
            Ok(()) => sender.send_request(request),
            Err(err) => return Ok(bad_gateway(&err)),
        }
    };
    match response.await {
        Ok(mut response) => {
            for (placeholder, value) in secrets.iter() {
                replace_in_values(response.headers_mut(), value, placeholder, FRAMING);
            }
            Ok(response.map(Either::Left))
        }
        Err(err) => Ok(bad_gateway(&err)),
    }
}

fn bad_gateway(err: &hyper::Error) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "krunbox gateway: the server failed: {err}\n"
    )))));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

/// Puts `value` in place of `placeholder` in a request's header values, but [`CARRIERS`];
/// in `Authorization: Basic` (and `Proxy-Authorization`) credentials, inside their base64.
fn put_values(headers: &mut HeaderMap, placeholder: &str, value: &str) {
    for name in [
        hyper::header::AUTHORIZATION,
        hyper::header::PROXY_AUTHORIZATION,
    ] {
        for header in headers.get_all(&name).iter().cloned().collect::<Vec<_>>() {
            let Some(replaced) = in_basic_credentials(&header, placeholder, value) else {
                continue;
            };
            if let Ok(mut new) = HeaderValue::from_str(&replaced) {
                new.set_sensitive(true);
                headers.remove(&name);
                headers.insert(name.clone(), new);
            }
        }
    }
    replace_in_values(headers, placeholder, value, CARRIERS);
}

/// `Basic BASE64(user:password)` with `placeholder` replaced by `value` in the decoded
/// credentials; `None` if it is not Basic or has no placeholder.
fn in_basic_credentials(header: &HeaderValue, placeholder: &str, value: &str) -> Option<String> {
    use base64::Engine;
    let text = header.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    if !contains(&decoded, placeholder.as_bytes()) {
        return None;
    }
    let replaced = replace(&decoded, placeholder.as_bytes(), value.as_bytes());
    Some(format!(
        "{scheme} {}",
        base64::engine::general_purpose::STANDARD.encode(replaced)
    ))
}

/// Replaces `from` by `to` in every header value but those named in `skip`; a replaced value
/// is marked sensitive.
fn replace_in_values(headers: &mut HeaderMap, from: &str, to: &str, skip: &[&str]) {
    for (name, value) in headers.iter_mut() {
        if skip.contains(&name.as_str()) {
            continue;
        }
        let bytes = value.as_bytes();
        if !contains(bytes, from.as_bytes()) {
            continue;
        }
        let replaced = replace(bytes, from.as_bytes(), to.as_bytes());
        // Values are checked to fit a header before the gateway starts.
        if let Ok(mut new) = HeaderValue::from_bytes(&replaced) {
            new.set_sensitive(true);
            *value = new;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len() + to.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_in_header_values_only_where_they_are() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer PH"));
        headers.insert("x-two", HeaderValue::from_static("PH and PH"));
        headers.insert("x-none", HeaderValue::from_static("P H"));
        headers.insert("host", HeaderValue::from_static("PH"));
        put_values(&mut headers, "PH", "value");
        assert_eq!(headers["host"], "PH", "never in a header servers echo");
        assert_eq!(headers["authorization"], "Bearer value");
        assert!(headers["authorization"].is_sensitive());
        assert_eq!(headers["x-two"], "value and value");
        assert_eq!(headers["x-none"], "P H");
        assert!(!contains(b"abc", b""));
        let mut basic = HeaderMap::new();
        basic.insert(
            "authorization",
            HeaderValue::from_static("Basic dXNlcjpQSA=="),
        );
        put_values(&mut basic, "PH", "value");
        assert_eq!(
            basic["authorization"], "Basic dXNlcjp2YWx1ZQ==",
            "user:value"
        );
    }

    #[test]
    fn requests_must_name_the_verified_server() {
        let authority = Authority {
            name: "api.test".into(),
            port: 443,
        };
        assert!(authority.is("api.test") && authority.is("API.test.:443"));
        assert!(!authority.is("api.test:8443") && !authority.is("evil.test"));
        assert!(!authority.is("api.test:x") && !authority.is("api.test.evil"));
    }
}
