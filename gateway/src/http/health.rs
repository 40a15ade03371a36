//! `/healthz`, `/readyz` and `/metrics`.

use http::{header, Response, StatusCode};

use super::reply::{full, text, Reply};
use crate::state::State;

/// `GET /healthz`: the process serves HTTP.
pub(crate) fn healthz() -> Reply {
    text(StatusCode::OK, "ok\n")
}

/// `GET /readyz`: the gateway's NATS connection is up.
pub(crate) fn readyz(state: &State) -> Reply {
    if state.ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "nats not connected\n")
    }
}

/// `GET /metrics`: the registry in the OpenMetrics text format.
pub(crate) fn metrics(state: &State) -> Reply {
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
