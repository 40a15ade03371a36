//! Only members read and write a conversation.

use crate::support::{Client, Nats, TestGateway};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_non_member_is_refused_subscribe_send_and_reads() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    alice.subscribe(&conv, None).await;
    let mut mallory = Client::connect(&g.ws_url(), "mallory").await;

    mallory
        .send(json!({"op":"subscribe","conv":conv,"ref":"s"}))
        .await;
    let r = mallory.reply().await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str(), r["ref"].as_str()),
        (Some("error"), Some("forbidden"), Some("s"))
    );

    mallory
        .send(json!({"op":"send","conv":conv,"client_id":"x","body":"spam"}))
        .await;
    let r = mallory.reply().await;
    assert_eq!(
        (r["code"].as_str(), r["ref"].as_str()),
        (Some("forbidden"), Some("x"))
    );

    mallory.send(json!({"op":"history","conv":conv})).await;
    assert_eq!(mallory.reply().await["code"], "forbidden");
    let path = format!("/v1/conversations/{conv}/messages");
    let body = crate::support::fabric::http_get_auth(g.addr, &path, "mallory").await;
    assert!(body.contains("forbidden"), "{body}");

    mallory.send(json!({"op":"members","conv":conv})).await;
    assert_eq!(mallory.reply().await["code"], "forbidden");
    mallory
        .send(json!({"op":"add_member","conv":conv,"user":"mallory"}))
        .await;
    assert_eq!(mallory.reply().await["code"], "forbidden");

    alice.no_msg_within(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_removed_member_stops_receiving_at_once() {
    let nats = Nats::start().await;
    let (g1, g2) = TestGateway::pair(&nats).await;
    let mut alice = Client::connect(&g1.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let mut bob = Client::connect(&g2.ws_url(), "bob").await;
    bob.subscribe(&conv, None).await;
    alice.post(&conv, "k1", "before").await;
    assert_eq!(bob.msg().await["body"], "before");

    alice
        .send(json!({"op":"remove_member","conv":conv,"user":"bob"}))
        .await;
    let r = alice.reply().await;
    assert_eq!(r["members"], json!(["alice"]), "{r}");
    let ended = bob.reply().await;
    assert_eq!(
        (ended["op"].as_str(), ended["reason"].as_str()),
        (Some("unsubscribed"), Some("removed"))
    );

    alice.post(&conv, "k2", "after").await;
    bob.no_msg_within(Duration::from_millis(300)).await;
    bob.send(json!({"op":"subscribe","conv":conv})).await;
    assert_eq!(bob.reply().await["code"], "forbidden");
}

#[tokio::test]
async fn conversations_and_direct_ids() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    alice
        .send(json!({"op":"create","kind":"direct","with":"bob","ref":"1"}))
        .await;
    let a = alice.reply().await;
    bob.send(json!({"op":"create","kind":"direct","with":"alice"}))
        .await;
    let b = bob.reply().await;
    assert_eq!(
        a["conversation"]["conv"], b["conversation"]["conv"],
        "one direct conversation per pair"
    );
    assert_eq!(a["ref"], "1");
    let group = alice.create_group(&["carol"]).await;
    alice.send(json!({"op":"conversations"})).await;
    let list = alice.reply().await;
    let mut ids: Vec<&str> = list["conversations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["conv"].as_str().expect("id"))
        .collect();
    ids.sort();
    let mut want = vec![
        a["conversation"]["conv"].as_str().expect("id"),
        group.as_str(),
    ];
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn concurrent_creates_by_one_user_all_show_in_the_list() {
    let nats = Nats::start().await;
    let (g1, g2) = TestGateway::pair(&nats).await;
    let mut a1 = Client::connect(&g1.ws_url(), "alice").await;
    let mut a2 = Client::connect(&g2.ws_url(), "alice").await;
    // Pipelined on two gateways at once: both update alice's conversation index.
    for i in 0..20 {
        let frame = json!({"op":"create","kind":"group","members":["bob"],"ref":format!("{i}")});
        a1.send(frame.clone()).await;
        a2.send(frame).await;
    }
    let mut created = Vec::new();
    for c in [&mut a1, &mut a2] {
        for _ in 0..20 {
            let r = c.reply().await;
            assert_eq!(r["op"], "conversation", "{r}");
            created.push(r["conversation"]["conv"].as_str().unwrap().to_string());
        }
    }
    created.sort();
    a1.send(json!({"op":"conversations"})).await;
    let list = a1.reply().await;
    let mut listed: Vec<String> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conv"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, created);
}
