//! The REST API: history pages and sends over plain HTTP, with a bearer token.
//!
//! - `GET /v1/conversations/{conv}/messages?before=&after=&limit=`: a history page.
//! - `POST /v1/conversations/{conv}/messages` with `{"client_id":..,"body":..}` (or the client id
//!   in an `Idempotency-Key` header): the same validation, idempotency and ack point as the
//!   WebSocket `send`; the answer comes after the PubAck.

use chatfabric_nats::{ConvId, UserId};
use http::{header, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::http::{bearer, full, json_error, Body};
use crate::protocol::{self, ErrorCode};
use crate::{send, State};

type Reply = Result<Response<Body>, http::Error>;

/// The conversation of `/v1/conversations/{conv}/messages`, and the caller.
fn target(
    req: &Request<Incoming>,
    state: &State,
) -> Result<(ConvId, UserId), (ErrorCode, &'static str)> {
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
    Ok((conv, user))
}

/// `GET /v1/conversations/{conv}/messages?before=&after=&limit=`.
pub(crate) async fn history(req: &Request<Incoming>, state: &State) -> Reply {
    let (conv, user) = match target(req, state) {
        Ok(t) => t,
        Err((code, message)) => return json_error(code, message),
    };
    let query = match crate::query::history_query(req.uri().query().unwrap_or_default()) {
        Ok(q) => q,
        Err(e) => return json_error(ErrorCode::Invalid, &e.to_string()),
    };
    let limits = &state.limits;
    if !state
        .history_limits
        .allow(&user, limits.history_rate, limits.history_burst)
    {
        return json_error(ErrorCode::RateLimited, "too many history reads; slow down");
    }
    if let Err(e) = state.membership.require_member(&conv, &user).await {
        return json_error(e.code(), &e.to_string());
    }
    match state
        .history
        .page(&conv, query.before, query.after, query.limit)
        .await
    {
        Ok(page) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(protocol::encode_history(&conv, &page, None))),
        Err(e) => json_error(e.code(), &e.to_string()),
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
    let (conv, user) = match target(&req, state) {
        Ok(t) => t,
        Err((code, message)) => return json_error(code, message),
    };
    let limits = &state.limits;
    if !state.send_limits.allow(&user, limits.rate, limits.burst) {
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
    if let Err(e) = send::validate(&client_id, &parsed.body, limits.max_body) {
        return json_error(e.code(), &e.to_string());
    }
    if let Err(e) = state.membership.require_member(&conv, &user).await {
        return json_error(e.code(), &e.to_string());
    }
    let timeout = limits.publish_timeout;
    let reply_id = client_id.clone();
    match send::publish(
        &state.fabric,
        &state.metrics,
        conv.clone(),
        user,
        client_id,
        parsed.body,
        timeout,
    )
    .await
    {
        Ok(stored) => {
            let body = protocol::encode(&protocol::ServerFrame::Ack {
                conv,
                client_id: reply_id,
                seq: stored.seq,
                duplicate: stored.duplicate,
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(body))
        }
        Err(e) => json_error(e.code(), &e.to_string()),
    }
}
