//! The HTTP front: routes to the WebSocket upgrade (`/ws`), server-sent events (`/v1/events`),
//! the REST API (`/v1/conversations/...`), health, readiness and metrics.
//!
//! hyper serves HTTP/1.1; `/ws` answers the upgrade itself and hands the raw socket to
//! tokio-tungstenite with the gateway's buffer sizes, so per-connection memory is ours to set.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::protocol::ErrorCode;
use crate::{api, connection, demo, sse, State};

/// Every response body: a full buffer, or a stream (server-sent events).
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// A complete body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// Drops the HTTP connection it came with once cancelled; in each request's extensions.
#[derive(Clone)]
pub(crate) struct Abort(pub(crate) CancellationToken);

/// Accepts connections until shutdown; each is served on its own task tracked by `state.tracker`.
pub(crate) async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, _peer) = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        state.tracker.clone().spawn(async move {
            let svc_state = state.clone();
            let abort = Abort(CancellationToken::new());
            let svc_abort = abort.clone();
            let service = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(svc_abort.clone());
                route(req, svc_state.clone())
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(state.limits.request_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                // A response gave up on a client that does not read (an event stream closed
                // after its grace): drop the connection with whatever hyper still buffers.
                _ = abort.0.cancelled() => Ok(()),
                _ = state.shutdown.cancelled() => {
                    // Finish the request in flight, then close (idle keep-alives close at once).
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            // Whoever waits to abort it need not any more.
            abort.0.cancel();
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

async fn route(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => upgrade(req, state),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if state.ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "nats not connected\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
                Ok(()) => Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(full(out)),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics encoding failed\n",
                ),
            }
        }
        (&Method::GET, "/v1/events") => sse::events(req, state).await,
        (&Method::GET, path) if path.starts_with("/v1/conversations/") => {
            api::history(&req, &state).await
        }
        (&Method::POST, path) if path.starts_with("/v1/conversations/") => {
            api::send(req, &state).await
        }
        _ if demo::handles(&state.demo, &req) => demo::serve(&state.demo, req).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    // Building a response from static parts cannot fail; answer 500 rather than panic if it did.
    Ok(resp.unwrap_or_else(|_| {
        let mut r = Response::new(full("internal error\n"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    }))
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(req: &Request<Incoming>) -> Option<&str> {
    crate::query::bearer(req.headers().get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// An error as JSON, with the HTTP status matching its code.
pub(crate) fn json_error(code: ErrorCode, message: &str) -> Result<Response<Body>, http::Error> {
    let status = match code {
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Result<Response<Body>, http::Error> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(body))
}

fn upgrade(mut req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, http::Error> {
    let identity = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(_) => match bearer(&req).map(|t| state.auth.verify(t)) {
            Some(Ok(id)) => Some(id),
            _ => {
                state.metrics.close("unauthorized");
                return text(StatusCode::UNAUTHORIZED, "invalid or expired token\n");
            }
        },
    };
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    // A token in the Authorization header was checked above, before the upgrade; without one the
    // first frame must be `auth`.
    let (true, Some(key), true) = (is_upgrade, key, version_ok) else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (version 13)\n",
        );
    };
    let Some(slot) = state.capacity.admit(&state.metrics.connections) else {
        state.metrics.close("capacity");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway at capacity; try another\n",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = state.limits.websocket_config();
    state.tracker.clone().spawn(async move {
        // Held until the connection ends, however it ends.
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                connection::serve(socket, identity, state).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(full(Bytes::new()))
}
