//! `GET /ws`: the WebSocket upgrade, answered by the gateway itself so that tungstenite gets the
//! raw socket with the gateway's buffer sizes; the connection then runs in [`crate::ws`].

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::reply::{bearer, full, text, Body};
use crate::outbox::Outbox;
use crate::state::State;
use crate::ws;

/// Upgrades to a WebSocket, checking a token in the `Authorization` header first.
pub(crate) fn upgrade(
    mut req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Body>, http::Error> {
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
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        // The accept loop serves plain TCP, so this is the socket itself: the outbox writes to
        // it directly (see outbox).
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            return tracing::warn!("upgraded connection is not a TCP socket");
        };
        let hyper::upgrade::Parts { io, read_buf, .. } = parts;
        // `read_buf` is a slice of hyper's read buffer (8 KiB and more): keep a copy of what the
        // client sent past the request, and let the buffer go now, not at the connection's end.
        let read_ahead = Bytes::copy_from_slice(&read_buf);
        drop(read_buf);
        let socket = Arc::new(io.into_inner());
        let limits = &state.limits;
        let outbox = Arc::new(Outbox::for_socket(
            socket.clone(),
            limits.queue,
            limits.queue_bytes,
            state.metrics.queued_bytes.clone(),
        ));
        let io = ws::SocketIo::new(socket, read_ahead, outbox.clone());
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        // A task of its own, so that this one's locals do not live as long as the connection.
        let tracker = state.tracker.clone();
        tracker.spawn(ws::serve(socket, outbox, identity, slot, state));
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
