//! The protocol as PROTOCOL.md writes it: what a request may ask for it gets, or a documented
//! error up front; every error answers its request (`ref`); unknown fields are ignored.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::fabric::http_get_auth_status;
use crate::support::{Client, Nats, TestGateway};

/// A GET with `user`'s token: the status code and the JSON body.
async fn get(addr: SocketAddr, path: &str, user: &str) -> (u16, Value) {
    let (status, body) = http_get_auth_status(addr, path, user).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn history_bounds_are_the_documented_ones() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&[]).await;
    let seqs = alice.post_numbered(&conv, 0..3).await;

    for (limit, ok) in [(0, false), (1, true), (1000, true), (1001, false)] {
        alice
            .send(json!({"op":"history","conv":conv,"limit":limit,"ref":"h"}))
            .await;
        let r = alice.reply().await;
        assert_eq!(r["ref"], "h");
        if ok {
            assert_eq!(r["op"], "history", "limit {limit}: {r}");
        } else {
            assert_eq!(r["code"], "invalid", "limit {limit}: {r}");
        }
        let path = format!("/v1/conversations/{conv}/messages?limit={limit}");
        let (status, body) = get(g.addr, &path, "alice").await;
        assert_eq!(status, if ok { 200 } else { 400 }, "limit {limit}: {body}");
    }
    // Cursors at or past the head: an empty page, also at the very end of the range.
    for after in [*seqs.last().unwrap(), u64::MAX - 1, u64::MAX] {
        alice
            .send(json!({"op":"history","conv":conv,"after":after,"ref":"a"}))
            .await;
        let r = alice.reply().await;
        assert_eq!(r["messages"], json!([]), "after {after}: {r}");
        let path = format!("/v1/conversations/{conv}/messages?after={after}");
        let (status, body) = get(g.addr, &path, "alice").await;
        assert_eq!((status, &body["messages"]), (200, &json!([])), "{body}");
    }
    // Unknown query parameters (a cache buster) are ignored.
    let path = format!("/v1/conversations/{conv}/messages?limit=2&_=1795437600");
    let (status, body) = get(g.addr, &path, "alice").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_resume_cursor_past_the_head_is_refused_not_silent() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let seqs = alice.post_numbered(&conv, 0..2).await;
    let head = *seqs.last().unwrap();
    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    bob.send(json!({"op":"subscribe","conv":conv,"after":head + 1000,"ref":"s"}))
        .await;
    let r = bob.reply().await;
    assert_eq!(
        (r["code"].as_str(), r["ref"].as_str()),
        (Some("invalid"), Some("s")),
        "{r}"
    );
    // At the head it is a plain subscribe: the next message arrives.
    assert_eq!(bob.subscribe(&conv, Some(head)).await, head);
    alice.post(&conv, "next", "next").await;
    assert_eq!(bob.msg().await["body"], "next");
}

#[tokio::test]
async fn every_error_carries_its_requests_ref() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&[]).await;
    let cases = [
        (json!({"op":"teleport","ref":"r1"}), "unknown_op", "r1"),
        (
            json!({"op":"history","conv":conv,"limit":"ten","ref":"r2"}),
            "invalid",
            "r2",
        ),
        (
            json!({"op":"subscribe","conv":"a.>","ref":"r3"}),
            "invalid",
            "r3",
        ),
        (
            json!({"op":"typing","conv":conv,"state":"maybe","ref":"r4"}),
            "invalid",
            "r4",
        ),
        (
            json!({"op":"create","kind":"cube","ref":"r5"}),
            "invalid",
            "r5",
        ),
        (
            json!({"op":"send","conv":"a b","client_id":"k9","body":"x"}),
            "invalid",
            "k9",
        ),
    ];
    for (frame, code, reference) in cases {
        alice.send(frame.clone()).await;
        let r = alice.reply().await;
        assert_eq!(
            (r["code"].as_str(), r["ref"].as_str()),
            (Some(code), Some(reference)),
            "{frame}: {r}"
        );
    }
    // A send's error is matched by its client id, in `ref`.
    alice
        .send(json!({"op":"send","conv":conv,"client_id":"k10","body":""}))
        .await;
    let r = alice.reply().await;
    assert_eq!(
        (r["code"].as_str(), r["ref"].as_str()),
        (Some("invalid"), Some("k10")),
        "{r}"
    );
}

#[tokio::test]
async fn unknown_fields_are_ignored_and_stamped_fields_never_taken() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    bob.subscribe(&conv, None).await;
    alice
        .send(json!({
            "op":"send","conv":conv,"client_id":"f1","body":"hi","priority":"high",
            "sender":"mallory","id":"forged","ts":1,"seq":999
        }))
        .await;
    let ack = alice.reply().await;
    assert_eq!(ack["op"], "ack", "{ack}");
    let msg = bob.msg().await;
    assert_eq!(msg["sender"], "alice");
    assert_ne!(msg["id"], "forged");
    assert_ne!(msg["ts"], 1);
    assert_eq!(msg["seq"], ack["seq"]);
    // Over HTTP too.
    let (status, ack) = crate::support::fabric::http_post(
        g.addr,
        &format!("/v1/conversations/{conv}/messages"),
        "alice",
        &json!({"client_id":"f2","body":"hi again","priority":"high","sender":"mallory","seq":1}),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    let msg = bob.msg().await;
    assert_eq!(
        (&msg["sender"], &msg["body"]),
        (&json!("alice"), &json!("hi again"))
    );
    assert_eq!(msg["seq"], ack["seq"], "{ack}");
    bob.no_msg_within(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_client_id_with_a_space_or_control_character_is_invalid() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&[]).await;
    // A send's reply carries its client_id as the `ref`, the refused one too.
    for id in ["a b", " ab", "a\tb", "a\u{7f}b"] {
        alice
            .send(json!({"op":"send","conv":conv,"client_id":id,"body":"x"}))
            .await;
        let r = alice.reply().await;
        assert_eq!(
            (r["code"].as_str(), r["ref"].as_str()),
            (Some("invalid"), Some(id)),
            "{id:?}: {r}"
        );
    }
    alice
        .post(&conv, "a-b_c.d:1", "printable ASCII is fine")
        .await;
}

#[tokio::test]
async fn metrics_are_openmetrics_text() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut s = tokio::net::TcpStream::connect(g.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("a response");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().lines().any(
            |l| l == "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
        ),
        "{head}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
}

#[tokio::test]
async fn group_limits_hold_for_titles_and_adds() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    alice
        .send(json!({"op":"create","kind":"group","members":[],"title":"t".repeat(201),"ref":"t"}))
        .await;
    let r = alice.reply().await;
    assert_eq!(
        (r["code"].as_str(), r["ref"].as_str()),
        (Some("too_large"), Some("t")),
        "{r}"
    );

    // A full group: 1000 members with alice, written as the gateway writes them (creating one
    // through `create` takes a thousand index updates).
    let mut members: Vec<String> = (1..1000).map(|i| format!("m{i}")).collect();
    members.insert(0, "alice".into());
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    crate::bots::seed(&nats, "full", &names).await;
    let conv = json!("full");
    alice
        .send(json!({"op":"add_member","conv":conv,"user":"one-more","ref":"a"}))
        .await;
    let r = alice.reply().await;
    assert_eq!(r["ref"], "a", "{r}");
    assert_eq!(r["code"], "invalid", "{r}");
    // Adding someone who is already a member is no change, and allowed.
    alice
        .send(json!({"op":"add_member","conv":conv,"user":"m1","ref":"b"}))
        .await;
    let r = alice.reply().await;
    assert_eq!(r["ref"], "b", "{r}");
    assert_ne!(r["op"], "error", "{r}");
    alice.send_raw(Message::Close(None)).await;
}
