//! `--log-format json`: every line one JSON object, events inside a connection carrying the
//! connection span's fields and the conversation actor's the conversation's; pretty stays the
//! default.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::support::stack::http_get;
use crate::support::{Client, Nats};

/// A gateway process with `extra` flags and its stderr piped; killed when dropped.
struct Gateway {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(nats: &Nats, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let child = Command::new(env!("CARGO_BIN_EXE_chatfabric"))
            .args(extra)
            .args([
                "gateway",
                "--listen",
                &addr.to_string(),
                "--nats-url",
                &nats.url_for(chatfabric_nats::permissions::Role::Gateway),
            ])
            .args(["--jwt-secret", "test-secret", "--sqlite-path"])
            .arg(dir.path().join("history.db"))
            .env("CHATFABRIC_LOG", "info,chatfabric_gateway=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chatfabric gateway");
        let until = Instant::now() + Duration::from_secs(30);
        while !ready(addr).await {
            assert!(Instant::now() < until, "gateway not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Stops the gateway and returns what it logged.
    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let stderr = self.child.stderr.take().expect("stderr");
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ready(addr: std::net::SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
        && http_get(addr, "/readyz").await == "ready\n"
}

/// Connects as alice and drops the socket without a close handshake (a debug event inside the
/// connection's span, after authentication).
async fn connect_and_vanish(addr: std::net::SocketAddr) {
    let c = Client::connect(&format!("ws://{addr}/ws"), "alice").await;
    drop(c);
}

/// Creates a group, subscribes to it and posts once: the gateway starts the conversation's feed
/// (a debug event in the `conversation` span). Returns the conversation id.
async fn subscribe_and_send(addr: std::net::SocketAddr) -> String {
    let mut c = Client::connect(&format!("ws://{addr}/ws"), "alice").await;
    let conv = c.create_group(&["bob"]).await;
    c.subscribe(&conv, None).await;
    c.post(&conv, "c1", "hello").await;
    assert_eq!(c.msg().await["client_id"], "c1");
    c.close().await;
    conv
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_connection_and_conversation_spans() {
    let nats = Nats::start().await;
    let gw = Gateway::start(&nats, &["--log-format", "json"]).await;
    connect_and_vanish(gw.addr).await;
    // The gateway logs the failed read once it notices: poll until it counted the close.
    let until = Instant::now() + Duration::from_secs(10);
    while http_get(gw.addr, "/metrics")
        .await
        .contains("chatfabric_gateway_connections 1")
    {
        assert!(Instant::now() < until, "connection not closed within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conv = subscribe_and_send(gw.addr).await;
    let lines = gw.stop();
    assert!(!lines.is_empty(), "no logs");
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        assert!(e["timestamp"].is_string() && e["level"].is_string(), "{e}");
    }
    let in_connection = events
        .iter()
        .find(|e| e["span"]["name"] == "connection")
        .unwrap_or_else(|| panic!("no event inside a connection span in {lines:#?}"));
    println!("{in_connection}");
    assert_eq!(in_connection["span"]["user"], "alice", "{in_connection}");
    assert!(in_connection["span"]["conn"].is_u64(), "{in_connection}");
    assert!(
        in_connection["spans"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{in_connection}"
    );
    // The conversation actor's events name the conversation, and no connection: the actor is
    // shared by every subscriber of the conversation on this gateway.
    let in_conversation = events
        .iter()
        .find(|e| e["span"]["name"] == "conversation")
        .unwrap_or_else(|| panic!("no event inside a conversation span in {lines:#?}"));
    println!("{in_conversation}");
    assert_eq!(
        in_conversation["span"]["conv"],
        conv.as_str(),
        "{in_conversation}"
    );
    assert!(
        in_conversation["spans"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["name"] != "connection")),
        "{in_conversation}"
    );
}

#[tokio::test]
async fn pretty_logs_stay_the_default() {
    let nats = Nats::start().await;
    let gw = Gateway::start(&nats, &[]).await;
    let lines = gw.stop();
    let listening = lines
        .iter()
        .find(|l| l.contains("gateway listening"))
        .unwrap_or_else(|| panic!("no start-up line in {lines:#?}"));
    assert!(
        serde_json::from_str::<Value>(listening).is_err(),
        "{listening}"
    );
}
