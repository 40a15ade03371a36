//! A minimal HTTP endpoint for processes without an HTTP server of their own (the persister, the
//! presence service, the NATS exporter): `/metrics`, and for roles `/healthz` (the process
//! answers) and `/readyz` (200 once the role works, 503 while it connects, provisions or starts).

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

/// Serves `registry` as OpenMetrics text on `addr` until `shutdown`, which also ends the scrapes
/// still being answered; `/readyz` answers what `ready` says, `/healthz` always 200.
pub(crate) async fn serve(
    addr: SocketAddr,
    registry: Registry,
    ready: impl Fn() -> bool + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = Arc::new(registry);
    let ready = Arc::new(ready);
    serve_with(addr, shutdown, move |path| {
        let (registry, ready) = (registry.clone(), ready.clone());
        async move {
            match path.as_str() {
                "/healthz" => return Ok(Page::text("ok")),
                "/readyz" if ready() => return Ok(Page::text("ready")),
                "/readyz" => return Err("not ready: connecting, provisioning or starting".into()),
                _ => {}
            }
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

impl Page {
    fn text(body: &str) -> Self {
        Self {
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }
}

/// Serves what `scrape` renders for each request's path, on `addr` until `shutdown`.
pub(crate) async fn serve_with<F, Fut>(
    addr: SocketAddr,
    shutdown: CancellationToken,
    scrape: F,
) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
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
                // The request head's path; the rest of the request is ignored.
                let mut buf = [0u8; 1024];
                let n = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
                let path = request_path(&buf[..n]);
                let (status, content_type, body) = match scrape(path).await {
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

/// The path of an HTTP request line (`GET /readyz HTTP/1.1`), without its query; `/` if none.
fn request_path(head: &[u8]) -> String {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let target = line.split(|&b| b == b' ').nth(1).unwrap_or(b"/");
    let path = target.split(|&b| b == b'?').next().unwrap_or(b"/");
    String::from_utf8_lossy(path).into_owned()
}

#[cfg(test)]
mod tests {
    use super::request_path;

    #[test]
    fn the_path_of_a_request_line() {
        assert_eq!(
            request_path(b"GET /readyz HTTP/1.1\r\nHost: x\r\n"),
            "/readyz"
        );
        assert_eq!(request_path(b"GET /metrics?x=1 HTTP/1.0\r\n"), "/metrics");
        assert_eq!(request_path(b""), "/");
        assert_eq!(request_path(b"garbage"), "/");
    }
}
