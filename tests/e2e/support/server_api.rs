//! The server API from a test: gateways holding API keys, and an HTTP client that calls them.

use std::net::SocketAddr;

use chatfabric_gateway::api_keys::{self, ApiKeys, Scope};
use chatfabric_gateway::GatewayConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::fabric::SECRET;
use super::Nats;

/// The key with every scope.
pub const FULL_KEY: &str = "cfk_full-test-key";
/// A key with the `messages` scope only.
pub const MESSAGES_KEY: &str = "cfk_messages-test-key";
/// A key with every scope but `messages`.
pub const MANAGER_KEY: &str = "cfk_manager-test-key";

/// The test keys as a gateway holds them (digests only).
pub fn keys() -> ApiKeys {
    let line = |name: &str, scopes: &str, key: &str| {
        format!("{name} {scopes} {}\n", api_keys::digest_hex(key))
    };
    let all: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    let text = line("backend", &all.join(","), FULL_KEY)
        + &line("poster", "messages", MESSAGES_KEY)
        + &line("manager", "conversations,users", MANAGER_KEY);
    ApiKeys::parse(&text).expect("test keys")
}

/// The fixture's gateway config with the test keys.
pub fn config(nats: &Nats) -> GatewayConfig {
    GatewayConfig {
        api_keys: keys(),
        ..nats.config()
    }
}

/// A call of the server API with `key` (none: no Authorization header): the status and the
/// JSON body (`Null` when the body is not JSON).
pub async fn call(
    addr: SocketAddr,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// [`call`] with the full key.
pub async fn api(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    call(addr, Some(FULL_KEY), method, path, body).await
}

/// A token for `user` issued at `iat` (seconds since the epoch), or without `iat`.
pub fn token_issued(user: &str, iat: Option<u64>) -> String {
    let now = chatfabric_nats::wire::now_ms() / 1000;
    let mut claims = serde_json::json!({"sub": user, "exp": now + 3600});
    if let Some(iat) = iat {
        claims["iat"] = iat.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("mint")
}

/// Whether a WebSocket upgrade with `token` is refused (401).
pub async fn ws_refused(url: &str, token: &str) -> bool {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => false,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status() == 401,
        Err(e) => panic!("unexpected upgrade failure: {e}"),
    }
}
