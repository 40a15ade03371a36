//! `chatfabric nats-exporter`: one nats-server's `/varz` as Prometheus gauges, for deployments
//! without the official `prometheus-nats-exporter` (no distribution package ships it;
//! `deploy/local/run.sh` runs one of these per node).
//!
//! It mirrors the official exporter's `-varz` mode: each numeric top-level field of `/varz`
//! becomes `gnatsd_varz_<field>{server_id="<the URL given>"}`, so the same dashboard queries work
//! against either. Every scrape reads the node afresh; a node that does not answer makes the
//! scrape fail (503, so Prometheus' `up` is 0) and the process keeps serving.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Page, Scrape};

/// How long one read of `/varz` may take (below Prometheus' scrape timeouts).
const FETCH_TIMEOUT: Duration = Duration::from_millis(900);
/// The largest `/varz` answer read (a few KiB in practice).
const MAX_RESPONSE: u64 = 1 << 20;

/// `chatfabric nats-exporter`.
#[derive(clap::Args)]
pub(crate) struct NatsExporterArgs {
    /// The node's monitoring URL (nats-server `-m` / `http:`), e.g. `http://127.0.0.1:8222`. It
    /// is also the `server_id` label, as with prometheus-nats-exporter.
    #[arg(env = "CHATFABRIC_NATS_MONITOR_URL")]
    pub(crate) url: String,
    /// Address to serve /metrics on.
    #[arg(
        long,
        env = "CHATFABRIC_NATS_EXPORTER_LISTEN",
        default_value = "127.0.0.1:7777"
    )]
    pub(crate) listen: SocketAddr,
}

/// Serves the node's `/varz` as metrics until `shutdown`.
pub(crate) async fn run(args: NatsExporterArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    crate::metrics::serve_with(args.listen, shutdown.clone(), move |_path| {
        let target = target.clone();
        async move { target.scrape().await }
    })
    .await?;
    tracing::info!(url = %args.url, listen = %args.listen, "nats exporter listening");
    shutdown.cancelled().await;
    Ok(())
}

/// A node's monitoring endpoint.
#[derive(Clone, Debug, PartialEq)]
struct Target {
    /// The URL as given: the `server_id` label.
    url: String,
    /// `host:port` to connect to.
    authority: String,
    /// The path of `/varz` (after any base path).
    varz: String,
}

impl Target {
    /// Parses `http://host[:port][/base]` (monitoring is plain HTTP here; port 80 by default).
    fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("{url}: the monitoring URL must start with http://"))?;
        let (authority, base) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!authority.is_empty(), "{url}: no host");
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let base = base.trim_end_matches('/');
        Ok(Self {
            url: url.to_string(),
            authority,
            varz: if base.is_empty() {
                "/varz".into()
            } else {
                format!("/{base}/varz")
            },
        })
    }

    /// Reads `/varz` and renders it, or says why not.
    async fn scrape(&self) -> Scrape {
        let varz = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .map_err(|_| format!("{}: no answer within {FETCH_TIMEOUT:?}", self.url))??;
        Ok(Page {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render(&self.url, &varz)?,
        })
    }

    /// One HTTP/1.0 GET (so the answer is close-delimited, never chunked), parsed as JSON.
    async fn fetch(&self) -> Result<Value, String> {
        let fail = |e: &dyn std::fmt::Display| format!("{}{}: {e}", self.url, self.varz);
        let mut stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| fail(&e))?;
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
            self.varz, self.authority
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| fail(&e))?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .await
            .map_err(|e| fail(&e))?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| fail(&"no HTTP response"))?;
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(fail(&status));
        }
        serde_json::from_str(body).map_err(|e| fail(&e))
    }
}

/// Every numeric top-level field of `varz` as a `gnatsd_varz_<field>` gauge labelled
/// `server_id="<server_id>"`, in Prometheus text format, sorted by name.
fn render(server_id: &str, varz: &Value) -> Result<String, String> {
    let fields = varz
        .as_object()
        .ok_or_else(|| format!("{server_id}: /varz is not a JSON object"))?;
    let mut numeric: Vec<(String, f64)> = fields
        .iter()
        .filter_map(|(k, v)| Some((metric_name(k), v.as_f64()?)))
        .collect();
    numeric.sort_by(|a, b| a.0.cmp(&b.0));
    let label = escape_label(server_id);
    let mut out = String::new();
    for (name, value) in numeric {
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{server_id=\"{label}\"}} {value}");
    }
    Ok(out)
}

/// `gnatsd_varz_<field>`, with anything but `[a-zA-Z0-9_]` replaced by `_`.
fn metric_name(field: &str) -> String {
    let field: String = field
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("gnatsd_varz_{field}")
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numeric_top_level_fields_become_labelled_gauges() {
        let varz = json!({
            "server_id": "NB6U", "version": "2.9.10", "mem": 11792384, "in_msgs": 42,
            "slow_consumers": 0, "cpu": 1.5, "cluster": {"port": 6222}, "http_req_stats": {"/varz": 1},
            "jetstream": {}, "tls_required": true, "weird-key": 7
        });
        let text = render("http://127.0.0.1:8222", &varz).expect("render");
        assert_eq!(
            text,
            "# TYPE gnatsd_varz_cpu gauge\n\
             gnatsd_varz_cpu{server_id=\"http://127.0.0.1:8222\"} 1.5\n\
             # TYPE gnatsd_varz_in_msgs gauge\n\
             gnatsd_varz_in_msgs{server_id=\"http://127.0.0.1:8222\"} 42\n\
             # TYPE gnatsd_varz_mem gauge\n\
             gnatsd_varz_mem{server_id=\"http://127.0.0.1:8222\"} 11792384\n\
             # TYPE gnatsd_varz_slow_consumers gauge\n\
             gnatsd_varz_slow_consumers{server_id=\"http://127.0.0.1:8222\"} 0\n\
             # TYPE gnatsd_varz_weird_key gauge\n\
             gnatsd_varz_weird_key{server_id=\"http://127.0.0.1:8222\"} 7\n"
        );
    }

    #[test]
    fn label_values_are_escaped_and_non_objects_refused() {
        let text = render("a\"b\\c\nd", &json!({"mem": 1})).expect("render");
        assert!(
            text.contains(r#"gnatsd_varz_mem{server_id="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        assert!(render("x", &json!([1, 2])).is_err());
    }

    #[test]
    fn urls_name_the_varz_endpoint() {
        let t = Target::parse("http://127.0.0.1:8222").expect("url");
        assert_eq!(
            (t.authority.as_str(), t.varz.as_str()),
            ("127.0.0.1:8222", "/varz")
        );
        let t = Target::parse("http://nats-1/base/").expect("url");
        assert_eq!(
            (t.authority.as_str(), t.varz.as_str()),
            ("nats-1:80", "/base/varz")
        );
        assert!(Target::parse("https://nats-1:8222").is_err());
        assert!(Target::parse("http:///varz").is_err());
    }

    #[tokio::test]
    async fn a_node_that_does_not_answer_fails_the_scrape() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let t = Target::parse(&format!("http://127.0.0.1:{port}")).expect("url");
        let err = t.scrape().await.err().expect("a scrape error");
        assert!(err.contains(&t.url), "{err}");
    }

    #[tokio::test]
    async fn a_live_node_is_scraped() {
        let Ok(server) = chatfabric_nats::server::NatsServer::start(Default::default()) else {
            panic!("nats-server must be installed for this test");
        };
        let t = Target::parse(&format!("http://127.0.0.1:{}", server.monitor_port())).expect("url");
        let page = t.scrape().await.expect("scrape");
        for name in [
            "gnatsd_varz_in_msgs",
            "gnatsd_varz_mem",
            "gnatsd_varz_slow_consumers",
        ] {
            assert!(
                page.body
                    .contains(&format!("{name}{{server_id=\"{}\"}} ", t.url)),
                "{name} missing: {}",
                page.body
            );
        }
    }
}
