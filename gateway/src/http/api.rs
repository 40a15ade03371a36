//! The REST API: history pages and sends over plain HTTP, with a bearer token.
//!
//! - `GET /v1/conversations/{conv}/messages?before=&after=&limit=`: a history page.
//! - `POST /v1/conversations/{conv}/messages` with `{"client_id":..,"body":..}` (or the client id
//!   in an `Idempotency-Key` header): the same validation, idempotency and ack point as the
//!   WebSocket `send`; the answer comes after the PubAck.

use chatfabric_nats::ConvId;
use http::{header, Request};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use super::query;
use super::reply::{bearer, json, json_error, service_error, Reply};
use crate::edge;
use crate::protocol::{self, ErrorCode};
use crate::service::{Caller, HistoryRequest, SendRequest};
use crate::state::State;

/// The conversation of `/v1/conversations/{conv}/messages`, and the caller.
fn target(
    req: &Request<Incoming>,
    state: &State,
) -> Result<(ConvId, Caller), (ErrorCode, &'static str)> {
    let conv = req
        .uri()
        .path()
        .strip_prefix("/v1/conversations/")
        .and_then(|p| p.strip_suffix("/messages"))
        .ok_or((ErrorCode::NotFound, "no such endpoint"))?;
    let user = match bearer(req).map(|t| state.auth.verify(t)) {
        Some(Ok(id)) => id.user,
        _ => {
            return Err((
                ErrorCode::Unauthenticated,
                "missing, invalid or expired token",
            ))
        }
    };
    let conv = ConvId::new(conv).map_err(|_| (ErrorCode::Invalid, "invalid conversation id"))?;
    Ok((conv, Caller::User(user)))
}

/// `GET /v1/conversations/{conv}/messages?before=&after=&limit=`.
pub(crate) async fn history(req: &Request<Incoming>, state: &State) -> Reply {
    let (conv, caller) = match target(req, state) {
        Ok(t) => t,
        Err((code, message)) => return json_error(code, message),
    };
    let query = match query::history_query(req.uri().query().unwrap_or_default()) {
        Ok(q) => q,
        Err(e) => return json_error(ErrorCode::Invalid, &e.to_string()),
    };
    let request = HistoryRequest {
        conv,
        before: query.before,
        after: query.after,
        limit: query.limit,
    };
    match state.service.history(&caller, &request).await {
        Ok(page) => json(protocol::encode_history(&request.conv, &page, None)),
        Err(e) => service_error(&e),
    }
}

/// `408` for a body that did not arrive in time; the connection closes after it.
fn body_timeout(timeout: std::time::Duration) -> Reply {
    let mut resp = json_error(
        ErrorCode::Invalid,
        &format!("request body not received within {} s", timeout.as_secs()),
    )?;
    *resp.status_mut() = http::StatusCode::REQUEST_TIMEOUT;
    resp.headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    Ok(resp)
}

/// The body of an HTTP send. Unknown fields are ignored, as in client frames.
#[derive(Deserialize)]
struct SendBody {
    #[serde(default)]
    client_id: Option<String>,
    body: String,
}

/// `POST /v1/conversations/{conv}/messages`.
pub(crate) async fn send(req: Request<Incoming>, state: &State) -> Reply {
    let (conv, caller) = match target(&req, state) {
        Ok(t) => t,
        Err((code, message)) => return json_error(code, message),
    };
    let limits = &state.limits;
    if !state
        .send_limits
        .allow(caller.acting_as(), limits.rate, limits.burst)
    {
        return json_error(ErrorCode::RateLimited, "too many sends; slow down");
    }
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The JSON envelope around a body of the largest allowed size, with room for escapes.
    let cap = limits.max_body * 2 + 1024;
    let body = Limited::new(req.into_body(), cap).collect();
    let raw = match tokio::time::timeout(limits.request_timeout, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return json_error(ErrorCode::TooLarge, "request body too large"),
        Err(_) => return body_timeout(limits.request_timeout),
    };
    let parsed: SendBody = match serde_json::from_slice(&raw) {
        Ok(p) => p,
        Err(e) => return json_error(ErrorCode::Invalid, &e.to_string()),
    };
    let Some(client_id) = parsed.client_id.or(key) else {
        return json_error(
            ErrorCode::Invalid,
            "client_id (or an Idempotency-Key header) is required",
        );
    };
    let request = SendRequest {
        conv,
        client_id,
        body: parsed.body,
    };
    match state.service.send(&caller, request).await {
        Ok(sent) => json(protocol::encode(&edge::ack(sent))),
        Err(e) => service_error(&e),
    }
}
