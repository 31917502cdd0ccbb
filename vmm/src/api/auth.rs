//! Who may use the API: every request passes [`check`].
//!
//! - A request with an `Origin` header comes from a web page (browsers always send it; SDKs
//!   and curl do not): refused, so a page the user visits cannot drive their sandboxes even
//!   through a TCP port on the loopback.
//! - With a token (always on TCP), `Authorization: Bearer <token>` must match it. Tokens are
//!   compared by their SHA-256 digests, so the comparison's timing says nothing about the
//!   token.
//! - On the Unix socket (0600, in the user's private runtime directory) the kernel already
//!   let only the user in.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The server's credentials.
#[derive(Debug, Clone, Default)]
pub struct Access {
    token: Option<[u8; 32]>,
}

impl Access {
    /// Anyone who can connect (the Unix socket without a token).
    pub fn open() -> Self {
        Self::default()
    }

    /// Only bearers of `token`.
    pub fn token(token: &str) -> Self {
        Self {
            token: Some(Sha256::digest(token.as_bytes()).into()),
        }
    }

    fn allows(&self, presented: Option<&str>) -> bool {
        match (&self.token, presented) {
            (None, _) => true,
            (Some(expected), Some(token)) => {
                let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                presented == *expected
            }
            (Some(_), None) => false,
        }
    }
}

/// The middleware.
pub async fn check(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    if request.headers().contains_key(header::ORIGIN) {
        return ApiError::CrossOrigin.into_response();
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !access.allows(presented) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_opens_a_guarded_server() {
        let access = Access::token("s3cret-token");
        assert!(access.allows(Some("s3cret-token")));
        assert!(!access.allows(Some("s3cret-tokeN")));
        assert!(!access.allows(Some("")));
        assert!(!access.allows(None));
        assert!(Access::open().allows(None));
    }
}
