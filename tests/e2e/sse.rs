//! Server-sent events and HTTP sends.

use crate::support::fabric::http_post;
use crate::support::{sse::SseClient, Client, Nats, TestGateway};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn sse_resumes_with_last_event_id_across_a_gateway_restart() {
    let nats = Nats::start().await;
    let g1 = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g1.ws_url(), "alice").await;
    let room = alice.create_group(&["bob"]).await;
    let other = alice.create_group(&["bob"]).await;
    alice.post(&room, "k0", "before").await;

    // All of bob's conversations, from now on.
    let mut sse = SseClient::connect(g1.addr, "bob", "", None).await;
    assert_eq!(sse.status, 200);
    for i in 1..=4 {
        let conv = if i % 2 == 0 { &other } else { &room };
        alice.post(conv, &format!("k{i}"), &format!("m{i}")).await;
    }
    let mut last_id = String::new();
    for i in 1..=2 {
        let e = sse.msg().await;
        assert_eq!(e.data["body"], format!("m{i}"));
        last_id = e.id;
    }
    assert!(
        last_id.contains(&room) && last_id.contains(&other),
        "{last_id}"
    );

    // The gateway goes away; messages keep coming; bob reconnects elsewhere with Last-Event-ID.
    drop(sse);
    g1.stop().await;
    let g2 = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g2.ws_url(), "alice").await;
    alice.post(&room, "k5", "m5").await;
    let mut sse = SseClient::connect(g2.addr, "bob", "", Some(&last_id)).await;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(sse.msg().await.data["body"].as_str().unwrap().to_string());
    }
    // Per conversation in order; across conversations the replay comes conversation by conversation.
    let mut sorted = bodies.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["m3", "m4", "m5"],
        "exactly the missed messages: {bodies:?}"
    );
    alice.post(&other, "k6", "m6").await;
    assert_eq!(sse.msg().await.data["body"], "m6");
}

#[tokio::test]
async fn sse_refuses_non_members_and_bad_tokens() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let room = alice.create_group(&[]).await;
    assert_eq!(
        SseClient::connect(g.addr, "mallory", &format!("?conv={room}"), None)
            .await
            .status,
        403
    );
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /v1/events HTTP/1.0\r\nAuthorization: Bearer nope\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.0 401") || out.starts_with("HTTP/1.1 401"),
        "{out}"
    );
}

#[tokio::test]
async fn a_stream_of_more_than_100_conversations_is_refused_as_too_large() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let convs =
        crate::support::heavy::seed_memberships(&nats.fabric("seed").await, "wide", "peer", 101)
            .await;
    // All of a user's conversations, when they are more than a stream carries: refused up front.
    let refused = SseClient::connect(g.addr, "wide", "", None).await;
    assert_eq!(refused.status, 400);
    let body: Value = serde_json::from_str(&refused.body().await).expect("a JSON error");
    assert_eq!(body["code"], "too_large", "{body}");
    // Naming 100 of them is the documented way out.
    let named: String = convs[..100].iter().map(|c| format!("&conv={c}")).collect();
    let query = format!("?{}", &named[1..]);
    assert_eq!(
        SseClient::connect(g.addr, "wide", &query, None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn http_send_retries_are_stored_once() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let room = alice.create_group(&["bob"]).await;
    alice.subscribe(&room, None).await;
    let path = format!("/v1/conversations/{room}/messages");
    let (status, first) = http_post(
        g.addr,
        &path,
        "bob",
        &json!({"client_id":"h1","body":"over http"}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let (_, retry) = http_post(
        g.addr,
        &path,
        "bob",
        &json!({"client_id":"h1","body":"over http"}),
    )
    .await;
    assert_eq!(
        (retry["seq"].clone(), retry["duplicate"].clone()),
        (first["seq"].clone(), json!(true))
    );
    let m = alice.msg().await;
    assert_eq!(
        (m["sender"].as_str(), m["body"].as_str()),
        (Some("bob"), Some("over http"))
    );
    alice
        .no_msg_within(std::time::Duration::from_millis(300))
        .await;

    let (status, err) = http_post(g.addr, &path, "bob", &json!({"body":"no id"})).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid")));
    let (status, err) = http_post(
        g.addr,
        &path,
        "mallory",
        &json!({"client_id":"x","body":"hi"}),
    )
    .await;
    assert_eq!((status, err["code"].as_str()), (403, Some("forbidden")));
    let (status, err) = http_post(
        g.addr,
        &path,
        "bob",
        &json!({"client_id":"x","body":"x".repeat(5000)}),
    )
    .await;
    assert_eq!((status, err["code"].as_str()), (400, Some("too_large")));
}

#[tokio::test]
async fn a_slow_sse_reader_is_closed_like_a_slow_websocket() {
    let nats = Nats::start().await;
    let g = TestGateway::start_for_slow_readers(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let room = alice.create_group(&["bob"]).await;

    // Bob opens the stream through a socket with a tiny receive buffer and stops reading.
    let mut s = g.tiny_buffer_socket().await;
    let req = format!(
        "GET /v1/events?conv={room} HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n",
        crate::support::fabric::token("bob")
    );
    s.write_all(req.as_bytes()).await.unwrap();

    let body = "x".repeat(4000);
    for i in 0..2500 {
        alice.post(&room, &format!("k{i}"), &body).await;
    }
    g.await_metric(
        "chatfabric_gateway_closes_total{kind=\"slow_consumer\"}",
        1.0,
    )
    .await;
    // Reading on, bob finds the error event at the end of what was buffered.
    let mut rest = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the stream ends")
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.trim_end().ends_with(
            r#"event: error
data: {"code":"slow_consumer"}"#
        ),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
}
