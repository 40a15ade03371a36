//! The whole production topology of `deploy/local/run.sh` (3 NATS nodes and their exporters, two
//! gateways behind HAProxy, two persisters, two presence services, optionally the webhook role,
//! Prometheus) in a temp dir, stopped when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// A running stack.
pub struct Stack {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local/run.sh")
}

impl Stack {
    /// Starts the stack with the test binary, the tests' JWT secret and a 1 s scrape interval. The
    /// script's watchdog stops it after 10 minutes even if this process is killed.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with the webhook role posting to `url` (a test receiver).
    pub fn start_with_webhooks(url: &str) -> Self {
        Self::start_with(&[("CHATFABRIC_WEBHOOK_URL", url)])
    }

    fn start_with(settings: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .envs(settings.iter().copied())
            .env("CHATFABRIC_BIN", env!("CARGO_BIN_EXE_chatfabric"))
            .env("CHATFABRIC_STACK_DIR", dir.path())
            .env("CHATFABRIC_STACK_TTL", "600")
            .env(
                "CHATFABRIC_JWT_SECRET",
                std::str::from_utf8(super::fabric::SECRET).expect("utf-8 secret"),
            )
            .env("CHATFABRIC_LOG", "warn")
            .env("SCRAPE_INTERVAL", "1s")
            .output()
            .expect("run deploy/local/run.sh (bash)");
        let stack_env = dir.path().join("env");
        let env = std::fs::read_to_string(&stack_env).unwrap_or_default();
        let stack = Self {
            env: env
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
        };
        if !out.status.success() {
            let logs: String = [
                "n1",
                "n2",
                "n3",
                "nats-exporter-n1",
                "nats-exporter-n2",
                "nats-exporter-n3",
                "gateway-1",
                "gateway-2",
                "persister-1",
                "persister-2",
                "presence-1",
                "presence-2",
                "webhooks-1",
                "haproxy",
                "prometheus",
            ]
            .iter()
            .map(|name| {
                let log = stack.log(name);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {name}\n{}\n", tail.join("\n"))
            })
            .collect();
            panic!(
                "deploy/local/run.sh start failed:\n{}{}\n{logs}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        stack
    }

    /// A value of the stack's `env` file.
    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from the stack's env file"))
    }

    /// An address of the stack's `env` file (`LB`, `GATEWAY_1`, `PROMETHEUS`, ...).
    pub fn addr(&self, key: &str) -> SocketAddr {
        self.var(key).parse().expect("address")
    }

    /// The load balancer's WebSocket URL: the only way clients reach the gateways.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.var("LB"))
    }

    /// Kills process `name` (`n1`, `gateway-1`, ...) with SIGKILL, as a crash would.
    pub fn kill(&self, name: &str) {
        self.run("kill", name);
    }

    /// Stops process `name` with SIGTERM (a clean stop).
    pub fn term(&self, name: &str) {
        self.run("term", name);
    }

    /// Starts the stopped process `name` again, with its settings.
    pub fn restart(&self, name: &str) {
        self.run("restart", name);
    }

    fn run(&self, command: &str, name: &str) {
        let status = Command::new("bash")
            .arg(script())
            .args([command, name])
            .arg(self.dir.path())
            .status()
            .expect("run deploy/local/run.sh");
        assert!(status.success(), "run.sh {command} {name} failed");
    }

    /// The log of process `name`, for failure messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// Evaluates a PromQL expression at the current time; the `result` array.
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let url = format!("/api/v1/query?query={}", urlencode(expr));
        let body = http_get(self.addr("PROMETHEUS"), &url).await;
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Prometheus answered {e}: {body}"));
        assert_eq!(v["status"], "success", "query {expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Prometheus' active targets as (job, url, health).
    pub async fn targets(&self) -> Vec<(String, String, String)> {
        let body = http_get(self.addr("PROMETHEUS"), "/api/v1/targets").await;
        let v: Value = serde_json::from_str(&body).expect("targets JSON");
        v["data"]["activeTargets"]
            .as_array()
            .expect("activeTargets")
            .iter()
            .map(|t| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (s(&t["labels"]["job"]), s(&t["scrapeUrl"]), s(&t["health"]))
            })
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .status();
        // Every role runs as its own NATS user: a refusal is a permission the shipped lists lack.
        let refused: Vec<String> = ["n1", "n2", "n3"]
            .iter()
            .flat_map(|n| {
                let log = self.log(n);
                log.lines()
                    .filter(|l| l.contains("Violation") && l.contains(":chatfabric-"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        if !std::thread::panicking() {
            assert!(
                refused.is_empty(),
                "nats-server refused a role:\n{}",
                refused.join("\n")
            );
        }
    }
}

/// Percent-encodes a query parameter.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A GET over HTTP/1.0 (close-delimited), returning the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .unwrap_or_else(|_| panic!("GET {addr}{path}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of an unlabelled series (e.g. `chatfabric_gateway_connections`) in `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
