//! `/healthz` (the process answers), `/readyz` (200 once the mirrors are loaded and the consumers
//! exist, 503 before) and `/metrics` (Prometheus text) on the role's own listener.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Serves the endpoints on `listener` until `shutdown`, which also closes the connections still
/// open; `ready` says what `/readyz` answers.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let registry = Arc::new(registry);
    // The connections being served, aborted when the server stops (dropping the set): a
    // scraper's idle keep-alive connection must not outlive the role, nor hold up its shutdown.
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::debug!(error = %e, "health accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let (registry, ready) = (registry.clone(), ready.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = answer(req.uri().path(), &registry, *ready.borrow());
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

fn answer(path: &str, registry: &Registry, ready: bool) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" if ready => (200, "text/plain", "ready\n".to_string()),
        "/readyz" => (
            503,
            "text/plain",
            "starting: loading members and presence\n".to_string(),
        ),
        "/metrics" => {
            let mut text = String::new();
            if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
                (500, "text/plain", "encoding metrics failed\n".to_string())
            } else {
                (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                )
            }
        }
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
