//! The HTTP front: routes to the WebSocket upgrade (`/ws`), server-sent events (`/v1/events`),
//! the REST API (`/v1/conversations/...`), health, readiness and metrics, and the demo page.
//!
//! hyper serves HTTP/1.1; `/ws` answers the upgrade itself and hands the raw socket to
//! tokio-tungstenite with the gateway's buffer sizes, so per-connection memory is ours to set.
//!
//! # Layout
//!
//! - this file: the accept loop and the router.
//! - `upgrade`: `/ws`, handed on to [`crate::ws`].
//! - `sse`: event streams. `api`: REST history and send. [`query`]: their query strings.
//! - `health`: health, readiness, metrics. [`demo`]: the demo page and its token endpoint.
//! - `server_api`: the application backend's API (`/v1/server/...`, API keys).
//! - `reply`: response helpers (JSON errors with the status of their code).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::State;
use reply::{full, text, Abort, Body};

mod api;
pub mod demo;
mod health;
pub mod query;
mod reply;
mod server_api;
pub mod sse;
mod upgrade;

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
        (&Method::GET, "/ws") => upgrade::upgrade(req, state),
        (&Method::GET, "/healthz") => health::healthz(),
        (&Method::GET, "/readyz") => health::readyz(&state),
        (&Method::GET, "/metrics") => health::metrics(&state),
        (&Method::GET, "/v1/events") => sse::events(req, state).await,
        (_, path) if path.starts_with(server_api::PREFIX) => server_api::route(req, &state).await,
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
