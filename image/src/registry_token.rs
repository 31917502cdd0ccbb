//! Bearer tokens for a registry (the Docker token protocol), with bounded answers.
//!
//! A registry that wants a token answers `GET /v2/` with
//! `WWW-Authenticate: Bearer realm="https://auth.example/token",service="registry"`. krunbox
//! then asks the realm `GET realm?service=…&scope=repository:NAME:pull`, with the registry's
//! Basic credentials if it has any, and reads `{"token": …}` (or `access_token`) from at most
//! [`MAX_TOKEN_RESPONSE`] bytes.
//!
//! The realm is named by the registry, so it is checked before credentials go there: it must
//! be `https`, or `http` only when the registry itself is spoken to over plain HTTP.

use serde::Deserialize;

use crate::auth::Credentials;
use crate::limits::MAX_TOKEN_RESPONSE;
use crate::registry_http::{self, RegistryError};

/// A registry's request for a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    /// Where to ask for the token.
    pub realm: String,
    /// The `service` to name in the request, if the registry gave one.
    pub service: Option<String>,
}

impl BearerChallenge {
    /// The first `Bearer` challenge with a realm in a `WWW-Authenticate` value; `None` when
    /// there is none (a `Basic` challenge, garbage).
    ///
    /// ```
    /// use krunbox_image::registry_token::BearerChallenge;
    /// let c = BearerChallenge::parse(r#"Bearer realm="https://a.test/token",service="reg""#).unwrap();
    /// assert_eq!(c.realm, "https://a.test/token");
    /// assert_eq!(c.service.as_deref(), Some("reg"));
    /// assert!(BearerChallenge::parse(r#"Basic realm="reg""#).is_none());
    /// assert!(BearerChallenge::parse("Bearer \"").is_none());
    /// ```
    pub fn parse(header: &str) -> Option<Self> {
        http_auth::ChallengeParser::new(header)
            .filter_map(Result::ok)
            .filter(|challenge| challenge.scheme.eq_ignore_ascii_case("Bearer"))
            .find_map(|challenge| {
                let param = |name: &str| {
                    challenge
                        .params
                        .iter()
                        .find(|(key, _)| key.eq_ignore_ascii_case(name))
                        .map(|(_, value)| value.to_unescaped())
                };
                Some(Self {
                    realm: param("realm")?,
                    service: param("service"),
                })
            })
    }
}

/// Why no token was had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The realm is not a URL krunbox sends credentials to.
    #[error("the registry's token realm {realm:?} is refused: {reason}")]
    BadRealm {
        /// The realm as the registry named it.
        realm: String,
        /// Why.
        reason: &'static str,
    },
    /// Talking to the token server failed, or it refused.
    #[error("getting a registry token: {0}")]
    Server(#[source] Box<RegistryError>),
    /// The answer holds no token.
    #[error("the token server at {realm} answered without a token: {reason}")]
    BadAnswer {
        /// Where the token was asked for.
        realm: String,
        /// What was wrong.
        reason: String,
    },
}

/// Asks `challenge`'s realm for a token for `scope`.
pub(crate) async fn request(
    http: &reqwest::Client,
    challenge: &BearerChallenge,
    scope: &str,
    credentials: &Credentials,
    insecure: bool,
) -> Result<String, TokenError> {
    let realm = checked_realm(&challenge.realm, insecure)?;
    let mut query = vec![("scope", scope)];
    if let Some(service) = &challenge.service {
        query.push(("service", service));
    }
    let mut request = http.get(realm.clone()).query(&query);
    if let Credentials::Basic { username, password } = credentials {
        request = request.basic_auth(username, Some(password));
    }
    let what = "asking for a registry token";
    let url = realm.to_string();
    let server = |e| TokenError::Server(Box::new(e));
    let response = request
        .send()
        .await
        .map_err(|source| RegistryError::Http {
            what,
            url: url.clone(),
            source,
        })
        .map_err(server)?;
    let response = registry_http::error_for_status(response, what, &url)
        .await
        .map_err(server)?;
    let body = registry_http::read_bounded(response, MAX_TOKEN_RESPONSE, what, &url)
        .await
        .map_err(server)?;
    token_from_answer(&body).map_err(|reason| TokenError::BadAnswer { realm: url, reason })
}

/// `realm` as a URL krunbox may ask for a token (and send credentials to): `https`, or `http`
/// when the registry itself is spoken to over plain HTTP (`insecure`).
pub fn checked_realm(realm: &str, insecure: bool) -> Result<reqwest::Url, TokenError> {
    let refuse = |reason| TokenError::BadRealm {
        realm: realm.to_owned(),
        reason,
    };
    let url = reqwest::Url::parse(realm).map_err(|_| refuse("not a URL"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if insecure => Ok(url),
        "http" => Err(refuse(
            "plain HTTP for a registry spoken to over HTTPS would send credentials in clear",
        )),
        _ => Err(refuse("not an http(s) URL")),
    }
}

/// The token in a token server's JSON answer.
///
/// ```
/// use krunbox_image::registry_token::token_from_answer;
/// assert_eq!(token_from_answer(br#"{"token":"t0k","expires_in":300}"#).unwrap(), "t0k");
/// assert_eq!(token_from_answer(br#"{"access_token":"a"}"#).unwrap(), "a");
/// assert!(token_from_answer(br#"{"token":""}"#).is_err());
/// assert!(token_from_answer(b"\xff").is_err());
/// ```
pub fn token_from_answer(body: &[u8]) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let token = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| "no \"token\" or \"access_token\"".to_owned())?;
    // The token goes into a header; a newline in it would be a header injection.
    if token.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("the token holds spaces or control characters".to_owned());
    }
    Ok(token)
}
