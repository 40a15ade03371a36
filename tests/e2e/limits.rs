//! One member must not grow a gateway's memory beyond its budgets, or delay others: history
//! bounded in bytes and rate, replays bounded by the connection's byte budget and interleaved with
//! live delivery, re-subscribes, presence queries and listings rate-limited.

use serde_json::{json, Value};

use crate::support::fabric::{http_get_auth, http_get_auth_status};
use crate::support::heavy::{
    close_code, persist_up_to, pipeline, seed_memberships, silent_socket, store_messages,
};
use crate::support::{Client, Nats, TestGateway};

/// A body of the largest allowed size.
fn big_body() -> String {
    "x".repeat(4000)
}

/// Seqs of a `history` frame's messages, newest first.
fn seqs_of(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// Error codes of the replies before the `pong` of a closing ping.
async fn errors_before_pong(client: &mut Client) -> Vec<String> {
    client.send(json!({"op":"ping","ref":"end"})).await;
    let mut codes = Vec::new();
    loop {
        let r = client.reply().await;
        match r["op"].as_str() {
            Some("pong") => return codes,
            Some("error") => codes.push(r["code"].as_str().unwrap_or_default().to_string()),
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_history_cache_is_bounded_in_bytes() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.history_cache_bytes = 256 * 1024;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&[]).await;
    let seqs = store_messages(&nats.fabric("seed").await, &conv, 300, &big_body()).await;
    // Many different pages of the largest size, as one member can ask for.
    for before in seqs.iter().rev().take(40) {
        let path = format!("/v1/conversations/{conv}/messages?before={before}&limit=1000");
        let page = http_get_auth(g.addr, &path, "alice").await;
        assert!(page.contains("\"op\":\"history\""), "{page}");
        let cached = g.metric("chatfabric_gateway_history_cache_bytes").await;
        assert!(cached <= 256.0 * 1024.0, "the cache holds {cached} bytes");
    }
    assert!(
        g.metric("chatfabric_gateway_history_cache_bytes").await > 0.0,
        "pages are cached"
    );
}

#[tokio::test]
async fn a_page_of_large_messages_is_bounded_in_bytes_and_walks_stay_complete() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&[]).await;
    let seqs = store_messages(&nats.fabric("seed").await, &conv, 200, &big_body()).await;
    // From JetStream (no persister yet), then from the store, on a gateway with a fresh cache.
    walk_both_ways(&g, &mut alice, &conv, &seqs).await;
    let _persister = persist_up_to(&nats, *seqs.last().expect("seqs")).await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    walk_both_ways(&g, &mut alice, &conv, &seqs).await;
}

/// Walks `conv` back over HTTP and forward over the WebSocket in pages of 1000 large messages:
/// every page within its byte bound, every message exactly once.
async fn walk_both_ways(g: &TestGateway, alice: &mut Client, conv: &str, seqs: &[u64]) {
    let mut walked = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut path = format!("/v1/conversations/{conv}/messages?limit=1000");
        if let Some(b) = before {
            path.push_str(&format!("&before={b}"));
        }
        let body = http_get_auth(g.addr, &path, "alice").await;
        assert!(body.len() <= 200 * 1024, "a page of {} bytes", body.len());
        let page = seqs_of(&serde_json::from_str(&body).expect("json"));
        if page.is_empty() {
            break;
        }
        before = page.last().copied();
        walked.extend(page);
    }
    walked.reverse();
    assert_eq!(walked, seqs);

    // The page reaches a WebSocket client too (a page of 1000 large messages used to exceed the
    // socket's write buffer and end the connection).
    let mut walked = Vec::new();
    let mut after = 0;
    loop {
        alice
            .send(json!({"op":"history","conv":conv,"after":after,"limit":1000}))
            .await;
        let mut page = seqs_of(&alice.reply().await);
        if page.is_empty() {
            break;
        }
        assert!(page.len() < 200, "a page of {} large messages", page.len());
        after = page[0];
        page.reverse();
        walked.extend(page);
    }
    assert_eq!(walked, seqs);
}

#[tokio::test]
async fn history_reads_are_rate_limited_per_user_over_http_and_websocket() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.limits.history_rate = 0.1;
    config.limits.history_burst = 5.0;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&[]).await;
    alice.post(&conv, "k1", "hello").await;

    let mut answered = 0;
    let mut limited = 0;
    for before in 1..=10 {
        let path = format!("/v1/conversations/{conv}/messages?before={before}");
        let (status, body) = http_get_auth_status(g.addr, &path, "alice").await;
        if status == 429 {
            // The documented 429 body: the code and a message.
            let refusal: Value = serde_json::from_str(&body).expect("a JSON body");
            assert_eq!(refusal["code"], "rate_limited", "{body}");
            assert!(refusal["message"].is_string(), "{body}");
            limited += 1;
        } else {
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("\"op\":\"history\""), "{body}");
            answered += 1;
        }
    }
    assert_eq!((answered, limited), (5, 5));
    // The WebSocket op draws on the same per-user budget.
    alice
        .send(json!({"op":"history","conv":conv,"ref":"h"}))
        .await;
    let r = alice.reply().await;
    assert_eq!(
        (r["code"].as_str(), r["ref"].as_str()),
        (Some("rate_limited"), Some("h")),
        "{r}"
    );
}

#[tokio::test]
async fn a_silent_reader_replaying_many_times_stays_within_its_byte_budget_then_is_closed() {
    const BUDGET: f64 = 256.0 * 1024.0;
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.limits.queue_bytes = 256 * 1024;
    config.limits.resubscribe_rate = 10_000.0;
    config.limits.resubscribe_burst = 10_000.0;
    config.limits.close_grace = std::time::Duration::from_secs(60);
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let old = alice.create_group(&["carol"]).await;
    let live = alice.create_group(&["carol"]).await;
    // More than the kernel buffers of a loopback connection hold.
    let seqs = store_messages(&nats.fabric("seed").await, &old, 2000, &big_body()).await;

    let mut carol = silent_socket(&g, "carol").await;
    pipeline(
        &mut carol,
        &json!({"op":"subscribe","conv":live}).to_string(),
        1,
    )
    .await;
    let resume = json!({"op":"subscribe","conv":old,"after":seqs[0] - 1}).to_string();
    pipeline(&mut carol, &resume, 64).await;
    g.await_metric("chatfabric_gateway_live_conversations", 2.0)
        .await;
    // The replays fill the socket, then at most half the budget, and wait.
    g.await_metric("chatfabric_gateway_queued_bytes", BUDGET / 4.0)
        .await;
    let queued = g.metric("chatfabric_gateway_queued_bytes").await;
    assert!(queued <= BUDGET, "{queued} bytes queued");

    // Live messages past the budget close her as a slow consumer; she loses nothing by it.
    for i in 0..100 {
        alice.post(&live, &format!("l{i}"), &big_body()).await;
        let queued = g.metric("chatfabric_gateway_queued_bytes").await;
        assert!(queued <= BUDGET, "{queued} bytes queued");
    }
    g.await_metric(
        "chatfabric_gateway_closes_total{kind=\"slow_consumer\"}",
        1.0,
    )
    .await;
    assert_eq!(close_code(&mut carol).await, 4008);
}

#[tokio::test]
async fn a_resume_longer_than_the_byte_budget_streams_in_order_and_joins_live_without_gaps() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.limits.queue_bytes = 64 * 1024;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let mut expected =
        store_messages(&nats.fabric("seed").await, &conv, 400, &"y".repeat(1000)).await;

    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    bob.subscribe(&conv, Some(expected[0] - 1)).await;
    // Live messages while the replay is still streaming follow it, in order.
    expected.extend(alice.post_numbered(&conv, 0..20).await);
    let got: Vec<u64> = bob.msgs(420).await.into_iter().map(|(s, _)| s).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn repeated_resumes_do_not_delay_live_delivery_to_others() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    // Even without the re-subscribe limit, replays only use the actor's idle turns.
    config.limits.resubscribe_rate = 10_000.0;
    config.limits.resubscribe_burst = 10_000.0;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob", "carol"]).await;
    let seqs = store_messages(&nats.fabric("seed").await, &conv, 3000, "z").await;
    let mut carol = Client::connect(&g.ws_url(), "carol").await;
    carol.subscribe(&conv, None).await;

    let resume = json!({"op":"subscribe","conv":conv,"after":seqs[0] - 1}).to_string();
    let mut bobs = Vec::new();
    for _ in 0..4 {
        let mut bob = silent_socket(&g, "bob").await;
        pipeline(&mut bob, &resume, 50).await;
        bobs.push(bob);
    }
    g.await_metric("chatfabric_gateway_fetched_messages", 100.0)
        .await;
    alice.post(&conv, "now", "hello").await;
    // Within the client's wait (10 s); it used to wait for every queued replay (minutes).
    assert_eq!(carol.msg().await["body"], "hello");
}

#[tokio::test]
async fn re_subscribing_past_the_limit_is_refused_and_the_connection_stays_open() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    // The default burst, with (next to) no refill while the test runs.
    config.limits.resubscribe_rate = 0.01;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&[]).await;
    alice.subscribe(&conv, None).await;
    for i in 0..30 {
        alice
            .send(json!({"op":"subscribe","conv":conv,"ref":format!("s{i}")}))
            .await;
    }
    let (mut subscribed, mut limited) = (0, 0);
    for _ in 0..30 {
        let r = alice.reply().await;
        match (r["op"].as_str(), r["code"].as_str()) {
            (Some("subscribed"), _) => subscribed += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("unexpected {r}"),
        }
    }
    // A burst of 10 at 1 per second.
    assert!(
        (10..=12).contains(&subscribed),
        "{subscribed} re-subscribes served"
    );
    assert_eq!(subscribed + limited, 30);
    alice.post(&conv, "k", "still here").await;
}

#[tokio::test]
async fn presence_queries_and_listings_past_their_limits_are_refused() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    // The default presence burst and a small listing burst, with (next to) no refill while the
    // test runs.
    config.limits.presence_rate = 0.01;
    config.limits.listing_rate = 0.01;
    config.limits.listing_burst = 5.0;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    alice.create_group(&["bob"]).await;

    for i in 0..80 {
        alice
            .send(json!({"op":"presence","user":"bob","ref":format!("p{i}")}))
            .await;
    }
    let limited = errors_before_pong(&mut alice).await;
    assert!(
        limited.len() == 30 && limited.iter().all(|c| c == "rate_limited"),
        "{limited:?}"
    );

    for i in 0..10 {
        alice
            .send(json!({"op":"conversations","ref":format!("c{i}")}))
            .await;
    }
    let limited = errors_before_pong(&mut alice).await;
    assert!(
        limited.len() == 5 && limited.iter().all(|c| c == "rate_limited"),
        "{limited:?}"
    );
}

#[tokio::test]
async fn a_user_in_5000_conversations_lists_them_and_queries_presence() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let convs = seed_memberships(&nats.fabric("seed").await, "wide", "peer", 5000).await;
    let mut wide = Client::connect(&g.ws_url(), "wide").await;
    // The listing comes in pages (a whole one used to exceed the socket's write buffer and end
    // the connection); walking them finds every conversation once.
    let mut listed = std::collections::BTreeSet::new();
    let mut after = serde_json::Value::Null;
    for page in 0.. {
        assert!(page <= convs.len() / 100 + 1, "the listing never ends");
        let frame = match &after {
            serde_json::Value::Null => json!({"op":"conversations","ref":"l"}),
            next => json!({"op":"conversations","after":next,"ref":"l"}),
        };
        wide.send(frame).await;
        let list = wide.reply().await;
        assert_eq!(list["ref"], "l", "{list}");
        for c in list["conversations"].as_array().expect("a page") {
            assert!(listed.insert(c["conv"].as_str().expect("id").to_string()));
        }
        after = list["next"].clone();
        if after.is_null() {
            break;
        }
    }
    assert_eq!(listed.len(), convs.len());
    // Sharing only the last of them is found from the two users' indexes.
    wide.send(json!({"op":"presence","user":"peer","ref":"p"}))
        .await;
    let answer = wide.event_where(|e| e["ref"] == "p").await;
    assert_eq!(answer["op"], "presence", "{answer}");
    wide.send(json!({"op":"presence","user":"stranger","ref":"q"}))
        .await;
    let refused = wide.reply().await;
    assert_eq!(
        (refused["code"].as_str(), refused["ref"].as_str()),
        (Some("forbidden"), Some("q"))
    );
}
