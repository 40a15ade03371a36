//! A minimal `/metrics` endpoint for processes without an HTTP server of their own (the persister,
//! the presence service, the NATS exporter).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What one scrape answers: a metrics page, or why there is none (a 503, which Prometheus records
/// as a failed scrape: the target's `up` is 0).
pub(crate) type Scrape = Result<Page, String>;

/// A metrics page and its content type.
pub(crate) struct Page {
    /// `content-type` of `body`.
    pub(crate) content_type: &'static str,
    /// The exposition text.
    pub(crate) body: String,
}

/// Serves `registry` as OpenMetrics text on `addr` (any path) until `shutdown`, which also ends
/// the scrapes still being answered.
pub(crate) async fn serve(
    addr: SocketAddr,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = Arc::new(registry);
    serve_with(addr, shutdown, move || {
        let registry = registry.clone();
        async move {
            let mut body = String::new();
            prometheus_client::encoding::text::encode(&mut body, &registry)
                .map_err(|e| format!("encoding the metrics: {e}"))?;
            Ok(Page {
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            })
        }
    })
    .await
}

/// Serves what `scrape` renders, once per request (any path), on `addr` until `shutdown`.
pub(crate) async fn serve_with<F, Fut>(
    addr: SocketAddr,
    shutdown: CancellationToken,
    scrape: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Scrape> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let scrape = Arc::new(scrape);
    tokio::spawn(async move {
        // The scrapes being answered, aborted when the server stops (dropping the set).
        let mut scrapes = JoinSet::new();
        loop {
            let (mut stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            while scrapes.try_join_next().is_some() {}
            let scrape = scrape.clone();
            scrapes.spawn(async move {
                // Read (and ignore) the request head; every path answers with the metrics.
                let mut buf = [0u8; 1024];
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
                        .await;
                let (status, content_type, body) = match scrape().await {
                    Ok(page) => ("200 OK", page.content_type, page.body),
                    Err(why) => (
                        "503 Service Unavailable",
                        "text/plain; charset=utf-8",
                        format!("{why}\n"),
                    ),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            });
        }
    });
    Ok(())
}
