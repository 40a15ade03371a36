//! The demo chat page and the development token endpoint.
//!
//! - `GET /` (and its assets): a small chat page built into the binary, which uses the
//!   JavaScript SDK (`clients/js`, bundled into `gateway/demo/chatfabric.js`). On by default
//!   under `chatfabric dev`, `--demo-page` on a gateway.
//! - `POST /dev/token` with `{"user":"alice"}`: mints an HS256 token for a typed-in name, so a
//!   visitor can open two windows as two users. It exists only when [`DemoConfig::dev_tokens`]
//!   holds a secret, which only `chatfabric dev` sets: with real authentication configured the
//!   route is a plain 404.

use chatfabric_nats::UserId;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use super::reply::{full, json_error, Body};
use crate::auth::mint_hs256;
use crate::protocol::ErrorCode;

/// What of the demo a gateway serves. The default serves nothing.
#[derive(Clone, Default)]
pub struct DemoConfig {
    /// Serve the chat page at `/`.
    pub page: bool,
    /// The HS256 secret `POST /dev/token` signs with; `None` (the default) means the route does
    /// not exist. Only `chatfabric dev` sets it.
    pub dev_tokens: Option<Vec<u8>>,
}

/// Validity of a minted token unless the request asks for less (or more, up to a day).
const DEFAULT_TTL_SECS: u64 = 12 * 3600;
/// Longest validity a minted token may ask for.
const MAX_TTL_SECS: u64 = 24 * 3600;
/// Largest `POST /dev/token` body.
const MAX_TOKEN_REQUEST: usize = 1024;

/// A static file of the page: its content type and bytes.
struct Asset {
    content_type: &'static str,
    bytes: &'static [u8],
}

/// The page's files, by path.
fn asset(path: &str) -> Option<Asset> {
    let (content_type, bytes): (&str, &[u8]) = match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("../../demo/index.html"),
        ),
        "/app.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../demo/app.js"),
        ),
        "/chatfabric.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../demo/chatfabric.js"),
        ),
        "/style.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../../demo/style.css"),
        ),
        _ => return None,
    };
    Some(Asset {
        content_type,
        bytes,
    })
}

/// Whether `req` is the demo's to answer under `config` (else the router goes on).
pub(crate) fn handles(config: &DemoConfig, req: &Request<Incoming>) -> bool {
    match (req.method(), req.uri().path()) {
        (&Method::GET, path) => config.page && asset(path).is_some(),
        (&Method::POST, "/dev/token") => config.dev_tokens.is_some(),
        _ => false,
    }
}

/// Answers a request [`handles`] accepted.
pub(crate) async fn serve(
    config: &DemoConfig,
    req: Request<Incoming>,
) -> Result<Response<Body>, http::Error> {
    if let (Some(secret), &Method::POST) = (&config.dev_tokens, req.method()) {
        return mint(secret, req).await;
    }
    match asset(req.uri().path()) {
        Some(a) => Response::builder()
            .header(header::CONTENT_TYPE, a.content_type)
            // Same binary, same bytes: let browsers revalidate instead of keeping stale copies.
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-content-type-options", "nosniff")
            .header(
                "content-security-policy",
                "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self'; \
                 img-src 'self' data:; frame-ancestors 'none'",
            )
            .body(full(a.bytes)),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not found\n")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// `POST /dev/token`: `{"user":"alice"}` -> `{"token":"...","user":"alice","expires_in":43200}`.
async fn mint(secret: &[u8], req: Request<Incoming>) -> Result<Response<Body>, http::Error> {
    let raw = match Limited::new(req.into_body(), MAX_TOKEN_REQUEST)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_error(ErrorCode::TooLarge, "request body too large"),
    };
    match token_for(secret, &raw) {
        Ok(body) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(full(body)),
        Err(e) => json_error(ErrorCode::Invalid, &e.to_string()),
    }
}

/// Why a token request was refused.
#[derive(Debug, thiserror::Error)]
enum TokenRequestError {
    /// The body is not `{"user":..}` (with an optional `ttl_secs`).
    #[error("{0}")]
    Body(#[source] serde_json::Error),
    /// The user name is not a valid user id.
    #[error("{0}")]
    User(#[source] chatfabric_nats::IdError),
    /// The validity asked for is out of range.
    #[error("ttl_secs is 1 to {MAX_TTL_SECS}")]
    Ttl,
    /// The token could not be signed.
    #[error("{0}")]
    Mint(#[source] crate::auth::AuthError),
}

/// The answer to a token request body, or why it is invalid.
fn token_for(secret: &[u8], raw: &[u8]) -> Result<String, TokenRequestError> {
    let request: TokenRequest = serde_json::from_slice(raw).map_err(TokenRequestError::Body)?;
    let user = UserId::new(request.user.trim()).map_err(TokenRequestError::User)?;
    let ttl = request.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(TokenRequestError::Ttl);
    }
    let token = mint_hs256(secret, &user, ttl).map_err(TokenRequestError::Mint)?;
    Ok(serde_json::json!({"token": token, "user": user, "expires_in": ttl}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;

    #[test]
    fn mints_tokens_the_gateway_accepts() {
        let body = token_for(b"s", br#"{"user":"alice"}"#).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = Authenticator::hs256(b"s")
            .verify(v["token"].as_str().unwrap())
            .unwrap();
        assert_eq!(id.user.as_str(), "alice");
        assert_eq!(v["expires_in"], DEFAULT_TTL_SECS);
    }

    #[test]
    fn refuses_bad_names_and_lifetimes() {
        assert!(token_for(b"s", br#"{"user":"a b"}"#).is_err());
        assert!(token_for(b"s", br#"{"user":""}"#).is_err());
        assert!(token_for(b"s", br#"{"user":"alice","ttl_secs":0}"#).is_err());
        assert!(token_for(b"s", br#"{"user":"alice","ttl_secs":999999}"#).is_err());
        assert!(token_for(b"s", br#"{"user":"alice","admin":true}"#).is_err());
        assert!(token_for(b"s", b"not json").is_err());
    }

    #[test]
    fn serves_the_page_and_its_assets_only() {
        for path in ["/", "/app.js", "/chatfabric.js", "/style.css"] {
            assert!(asset(path).is_some_and(|a| !a.bytes.is_empty()), "{path}");
        }
        assert!(asset("/../Cargo.toml").is_none());
        assert!(asset("/ws").is_none());
    }
}
