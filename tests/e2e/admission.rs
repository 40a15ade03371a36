//! What a client may hold: tokens with odd claims, connections and event streams against
//! `--max-connections`, slow request bodies.

use crate::support::hostile::{connect_with_token, now_secs, token_with};
use crate::support::{fabric::token, sse::SseClient, Client, Nats, TestGateway};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const CONNECTIONS: &str = "chatfabric_gateway_connections ";

async fn one_place_gateway(nats: &Nats) -> TestGateway {
    let mut config = nats.config();
    config.limits.max_connections = 1;
    TestGateway::start_with(nats, config, 8192).await
}

/// Polls until `url` accepts a WebSocket again (a place was given back), for at most 10 s.
async fn connects_again(url: &str) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while connect_with_token(url, &token("carol")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no place was given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Client::connect(url, "carol").await
}

#[tokio::test]
async fn a_token_valid_until_the_end_of_time_is_served_and_gives_its_place_back() {
    let nats = Nats::start().await;
    let g = one_place_gateway(&nats).await;
    let forever = token_with(json!({"sub":"alice","exp":u64::MAX}));
    let mut ws = connect_with_token(&g.ws_url(), &forever).await.unwrap();
    ws.next().await.expect("ready").unwrap();
    ws.send(Message::Text(r#"{"op":"ping","ref":"p"}"#.into()))
        .await
        .unwrap();
    let pong = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("pong") => break t,
            Some(Ok(_)) => {}
            other => panic!("the connection ended: {other:?}"),
        }
    };
    assert!(pong.contains(r#""ref":"p""#), "{pong}");
    ws.close(None).await.unwrap();
    crate::support::hostile::await_metric_at_most(&g, CONNECTIONS, 0.0).await;
    // The only place is free again.
    let mut next = connects_again(&g.ws_url()).await;
    next.send(json!({"op":"ping"})).await;
    assert_eq!(next.reply().await["op"], "pong");
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let later = token_with(json!({"sub":"alice","exp":now_secs() + 7200,"nbf":now_secs() + 3600}));
    match connect_with_token(&g.ws_url(), &later).await {
        Err(e) => assert!(e.to_string().contains("401"), "{e}"),
        Ok(_) => panic!("a token valid only in an hour was accepted"),
    }
    let sse = SseClient::connect_with_token(g.addr, &later, "", None).await;
    assert_eq!(sse.status, 401);
    // Within the documented leeway (5 s) it is accepted.
    let skewed = token_with(json!({"sub":"alice","exp":now_secs() + 7200,"nbf":now_secs() + 2}));
    assert!(connect_with_token(&g.ws_url(), &skewed).await.is_ok());
}

#[tokio::test]
async fn event_streams_count_against_max_connections() {
    let nats = Nats::start().await;
    let g = one_place_gateway(&nats).await;
    let sse = SseClient::connect(g.addr, "alice", "", None).await;
    assert_eq!(sse.status, 200);
    // The stream holds the only place: neither a WebSocket nor another stream gets in.
    match connect_with_token(&g.ws_url(), &token("bob")).await {
        Err(e) => assert!(e.to_string().contains("503"), "{e}"),
        Ok(_) => panic!("a WebSocket got in past max-connections"),
    }
    assert_eq!(
        SseClient::connect(g.addr, "bob", "", None).await.status,
        503
    );
    drop(sse);
    connects_again(&g.ws_url()).await;
}

#[tokio::test]
async fn a_request_body_that_never_arrives_times_out() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.limits.request_timeout = Duration::from_secs(1);
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let room = alice.create_group(&[]).await;
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let head = format!(
        "POST /v1/conversations/{room}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"client_id\"",
        token("alice")
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The rest of the body never comes: the gateway answers 408 and closes.
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .expect("the gateway gave up on the body")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Headers that never end are cut off by the same timeout.
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the gateway gave up on the headers")
        .ok();
}
