//! The end-of-run audit: every message in the stream is in both history walks (WebSocket on one
//! gateway, REST on the other) and in the store exactly once, in order; presence converged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chatfabric_nats::wire::StoredMessage;
use chatfabric_nats::ConvId;
use chatfabric_storage::{HistoryStore, PageQuery, SqliteConfig, SqliteStore};
use futures::StreamExt;
use serde_json::{json, Value};

use super::topology::Topology;
use crate::support::fabric::http_get_auth;
use crate::support::Client;

/// Per conversation: a member (its first sender) and the stream's seqs, ascending.
pub struct StreamContents {
    pub convs: BTreeMap<String, (String, Vec<u64>)>,
    pub last: u64,
}

/// Reads the whole message stream.
pub async fn stream_contents(t: &Topology) -> StreamContents {
    let js = t.admin().await;
    let mut stream = js.get_stream("CHAT_MSGS_0").await.expect("stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    let mut convs: BTreeMap<String, (String, Vec<u64>)> = BTreeMap::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.expect("stream message");
        let msg: StoredMessage = serde_json::from_slice(&m.payload).expect("stored message");
        convs
            .entry(msg.conv.to_string())
            .or_insert_with(|| (msg.sender.to_string(), Vec::new()))
            .1
            .push(seq);
    }
    StreamContents { convs, last }
}

fn seqs_of(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["seq"].as_u64()).collect())
        .unwrap_or_default()
}

/// Adds a page (newest first) to `all`; the `before` of the next page, or `None` at the end.
fn advance(all: &mut Vec<u64>, page: Vec<u64>) -> Option<u64> {
    let oldest = *page.last()?;
    all.extend(page);
    Some(oldest)
}

/// The seqs collected newest first, ascending.
fn ascending(mut all: Vec<u64>) -> Vec<u64> {
    all.reverse();
    all
}

/// Asserts both history walks and the store hold exactly the stream's messages.
pub async fn history_matches_stream(t: &Topology, contents: &StreamContents) {
    let store = SqliteStore::open_for_reads(SqliteConfig::new(&t.db))
        .await
        .expect("open the store");
    // The persisters catch up first.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.watermark(0).await.unwrap_or(0) < contents.last {
        assert!(Instant::now() < deadline, "the persisters never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let urls = t.ws_urls();
    let rest = std::net::SocketAddr::from(([127, 0, 0, 1], t.gateway_ports[1]));
    for (conv, (member, expected)) in &contents.convs {
        let mut ws = Client::connect(&urls[0], member).await;
        let (mut via_ws, mut before) = (Vec::new(), None);
        loop {
            ws.send(json!({"op":"history","conv":conv,"limit":200,"before":before,"ref":"h"}))
                .await;
            let page = seqs_of(&ws.reply().await);
            match advance(&mut via_ws, page) {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        let (mut via_rest, mut before) = (Vec::new(), None);
        loop {
            let path = match before {
                Some(b) => format!("/v1/conversations/{conv}/messages?limit=200&before={b}"),
                None => format!("/v1/conversations/{conv}/messages?limit=200"),
            };
            let body = http_get_auth(rest, &path, member).await;
            let page = seqs_of(&serde_json::from_str(&body).unwrap_or(Value::Null));
            match advance(&mut via_rest, page) {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        let id = ConvId::new(conv).expect("conv id");
        let (mut in_store, mut before) = (Vec::new(), None);
        loop {
            let q = match before {
                Some(b) => PageQuery::before(b, 1000),
                None => PageQuery::latest(1000),
            };
            let mut page: Vec<u64> = store
                .page(&id, q)
                .await
                .expect("store page")
                .iter()
                .map(|r| r.seq)
                .collect();
            page.sort_unstable_by(|a, b| b.cmp(a)); // newest first, like the walks
            match advance(&mut in_store, page) {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        let (via_ws, via_rest, in_store) =
            (ascending(via_ws), ascending(via_rest), ascending(in_store));
        assert_eq!(&via_ws, expected, "{conv}: WebSocket history vs stream");
        assert_eq!(&via_rest, expected, "{conv}: REST history vs stream");
        assert_eq!(&in_store, expected, "{conv}: store vs stream");
    }
}

/// Waits until no device key is left in the presence bucket (dead instances' keys included);
/// returns how long that took.
pub async fn device_keys_gone(t: &Topology, limit: Duration) -> Duration {
    let js = t.admin().await;
    let kv = js.get_key_value("CHAT_PRESENCE").await.expect("bucket");
    let start = Instant::now();
    loop {
        // A listing is bounded: async-nats' `keys()` can fail to end when every key under it is
        // deleted. One that does not end in time counts as "not known to be empty".
        let listed = tokio::time::timeout(Duration::from_secs(2), async {
            let mut left = Vec::new();
            let mut keys = kv.keys().await.ok()?;
            while let Some(Ok(k)) = keys.next().await {
                if k.starts_with("dev.") {
                    left.push(k);
                }
            }
            Some(left)
        })
        .await
        .ok()
        .flatten();
        let left = listed.unwrap_or_else(|| vec!["(the listing did not end in time)".into()]);
        if left.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "device keys left after {limit:?}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Each node's own `(messages, first, last)` of the fabric's streams, once they agree or after
/// `limit`: a line per stream saying whether the replicas agree.
pub async fn replica_report(t: &Topology, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let streams = [
        "CHAT_MSGS_0",
        "KV_CHAT_CONVS",
        "KV_CHAT_PRESENCE",
        "KV_CHAT_WATERMARKS",
    ];
    loop {
        let mut lines = Vec::new();
        let mut all_agree = true;
        for stream in streams {
            let mut states = Vec::new();
            for n in &t.nodes {
                let j = crate::replicas::jsz(n.monitor_port())
                    .await
                    .unwrap_or(Value::Null);
                states.push(crate::replicas::replica_state(&j, stream));
            }
            let agree = states.windows(2).all(|w| w[0] == w[1]);
            all_agree &= agree;
            lines.push(format!(
                "{stream}: replicas {} (messages, first, last per node: {states:?})",
                if agree { "agree" } else { "DIVERGE" }
            ));
        }
        if all_agree || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether the nats-server under test (`NATS_SERVER_BIN`, else the one on PATH) is a 2.9 release.
pub fn server_is_2_9() -> bool {
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("v2.9."))
        .unwrap_or(false)
}
