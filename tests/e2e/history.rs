//! History: complete while the persister lags or is down, pages that never skip or repeat, and a
//! persister killed with SIGKILL loses nothing and duplicates nothing.

use crate::support::Spawned;
use chatfabric_nats::permissions::Role;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{fabric::http_get_auth, Client, Nats, TestGateway};
use chatfabric_nats::{ConvId, Fabric, UserId};
use chatfabric_persister::DrainConfig;
use chatfabric_storage::{HistoryStore, PageQuery};
use futures::future::join_all;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Stores `n` messages in `conv` straight through JetStream, concurrently; returns their seqs.
async fn publish(fabric: &Fabric, conv: &str, from: usize, n: usize) -> Vec<u64> {
    let conv = ConvId::new(conv).expect("conv");
    let metrics = chatfabric_gateway::metrics::Metrics::new(&mut Default::default());
    let mut seqs = Vec::with_capacity(n);
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(500) {
        let acks = join_all(chunk.iter().map(|i| {
            chatfabric_gateway::send::publish(
                fabric,
                &metrics,
                chatfabric_gateway::send::Draft {
                    conv: conv.clone(),
                    sender: UserId::new("alice").expect("id"),
                    via: None,
                    client_id: format!("k{i}"),
                    body: format!("m{i}"),
                },
                Duration::from_secs(10),
            )
        }))
        .await;
        seqs.extend(acks.into_iter().map(|a| a.expect("stored").seq));
    }
    seqs.sort_unstable();
    seqs
}

/// Walks `conv`'s history backwards over HTTP in pages of `limit`; returns seqs newest first.
async fn walk_back(g: &TestGateway, conv: &str, limit: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let mut path = format!("/v1/conversations/{conv}/messages?limit={limit}");
        if let Some(b) = before {
            path.push_str(&format!("&before={b}"));
        }
        let page: Value =
            serde_json::from_str(&http_get_auth(g.addr, &path, "alice").await).expect("json");
        let seqs: Vec<u64> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect();
        if seqs.is_empty() {
            return out;
        }
        before = seqs.last().copied();
        out.extend(seqs);
    }
}

/// Walks forward with `after` over the WebSocket op; returns seqs oldest first.
async fn walk_forward(client: &mut Client, conv: &str, limit: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        client
            .send(json!({"op":"history","conv":conv,"after":after,"limit":limit}))
            .await;
        let page = client.reply().await;
        assert_eq!(page["op"], "history", "{page}");
        let mut seqs: Vec<u64> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect();
        if seqs.is_empty() {
            return out;
        }
        seqs.reverse(); // pages are newest first
        after = *seqs.last().expect("non-empty");
        out.extend(seqs);
    }
}

async fn wait_for_watermark(store: &dyn HistoryStore, seq: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while store.watermark(0).await.expect("watermark") < seq {
        assert!(
            tokio::time::Instant::now() < deadline,
            "persister never reached {seq}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn drain(
    nats_fabric: Fabric,
    store: Arc<dyn HistoryStore>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let config = DrainConfig {
        watermark_interval: Duration::from_millis(20),
        ..DrainConfig::default()
    };
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            chatfabric_persister::run(nats_fabric, store, config, stop)
                .await
                .expect("drain")
        }
    });
    (stop, task)
}

#[tokio::test]
async fn history_is_complete_with_the_persister_down() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let seqs = alice.post_numbered(&conv, 0..30).await;
    alice
        .send(json!({"op":"history","conv":conv,"limit":10,"ref":"h"}))
        .await;
    let page = alice.reply().await;
    assert_eq!(page["ref"], "h");
    let got: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    let newest: Vec<u64> = seqs.iter().rev().take(10).copied().collect();
    assert_eq!(
        got, newest,
        "the newest page, newest first, straight after the acks"
    );
    assert_eq!(page["messages"][0]["body"], "m29");

    let back = walk_back(&g, &conv, 7).await;
    assert_eq!(back, seqs.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(walk_forward(&mut alice, &conv, 7).await, seqs);
}

#[tokio::test]
async fn pages_over_10k_messages_never_skip_or_repeat() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&[]).await;
    let fabric = nats.fabric("history-test").await;

    // The first half is persisted; the second half exists only in JetStream (persister stopped).
    let (stop, task) = drain(
        nats.fabric_as(Role::Persister, "drain", 8192).await.0,
        nats.history.clone(),
    );
    let mut seqs = publish(&fabric, &conv, 0, 5000).await;
    wait_for_watermark(nats.history.as_ref(), *seqs.last().unwrap()).await;
    stop.cancel();
    task.await.unwrap();
    seqs.extend(publish(&fabric, &conv, 5000, 5000).await);

    let descending: Vec<u64> = seqs.iter().rev().copied().collect();
    assert_eq!(
        walk_back(&g, &conv, 1000).await,
        descending,
        "store + stream, backwards"
    );
    assert_eq!(
        walk_forward(&mut alice, &conv, 999).await,
        seqs,
        "store + stream, forwards"
    );

    // Everything persisted: the store alone answers, with the same pages.
    let (stop, task) = drain(
        nats.fabric_as(Role::Persister, "drain", 8192).await.0,
        nats.history.clone(),
    );
    wait_for_watermark(nats.history.as_ref(), *seqs.last().unwrap()).await;
    stop.cancel();
    task.await.unwrap();
    let g2 = TestGateway::start(&nats).await; // a fresh page cache
    assert_eq!(walk_back(&g2, &conv, 333).await, descending);
}

fn spawn_persister(nats: &Nats, db: &std::path::Path) -> Spawned {
    let url = nats.url_for(Role::Persister);
    crate::support::spawn_chatfabric([
        "persister".as_ref(),
        "--nats-url".as_ref(),
        url.as_ref(),
        "--metrics-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        // What the killed persister had fetched comes back after this.
        "--ack-wait-secs".as_ref(),
        "3".as_ref(),
        "--sqlite-path".as_ref(),
        db.as_os_str(),
    ])
}

#[tokio::test]
async fn a_persister_killed_mid_drain_loses_and_duplicates_nothing() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("killed.db");
    let store: Arc<dyn HistoryStore> = Arc::new(
        chatfabric_storage::SqliteStore::open(chatfabric_storage::SqliteConfig::new(&db))
            .await
            .unwrap(),
    );
    let fabric = nats.fabric("load").await;
    let mut persister = spawn_persister(&nats, &db);

    // Load while it drains; kill -9 it once it has stored something but not everything.
    let load = tokio::spawn({
        let fabric = fabric.clone();
        async move { publish(&fabric, "room", 0, 8000).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.watermark(0).await.unwrap() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "persister stored nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    persister.kill(); // SIGKILL
    let seqs = load.await.unwrap();
    let at_kill = store.watermark(0).await.unwrap();
    assert!(
        at_kill < *seqs.last().unwrap(),
        "killed before the drain finished"
    );

    let mut persister = spawn_persister(&nats, &db);
    wait_for_watermark(store.as_ref(), *seqs.last().unwrap()).await;
    persister.kill();

    let conv = ConvId::new("room").unwrap();
    let mut stored = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .page(
                &conv,
                PageQuery {
                    before,
                    after: None,
                    limit: 1000,
                },
            )
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.seq);
        stored.extend(page.iter().map(|r| r.seq));
    }
    stored.reverse();
    assert_eq!(stored, seqs, "every message exactly once");
}

#[tokio::test]
async fn a_persister_starting_while_another_program_locks_the_database_waits_for_it() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("locked.db");
    // Another program (a backup, `sqlite3`) holds the file locked for longer than the
    // persister's busy timeout (5 s).
    let other = rusqlite::Connection::open(&db).unwrap();
    other
        .execute_batch("BEGIN EXCLUSIVE; CREATE TABLE other (x);")
        .unwrap();
    let mut persister = spawn_persister(&nats, &db);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(persister.exited(), None, "the persister gave up");
    other.execute_batch("COMMIT").unwrap();
    drop(other);

    // Once the file is free the persister opens it and stores what is sent.
    let fabric = nats.fabric("load").await;
    let seqs = publish(&fabric, "room", 0, 10).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let store = loop {
        match chatfabric_storage::SqliteStore::open_for_reads(
            chatfabric_storage::SqliteConfig::new(&db),
        )
        .await
        {
            Ok(store) => break store,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_for_watermark(&store, *seqs.last().unwrap()).await;
    assert_eq!(persister.exited(), None);
}
