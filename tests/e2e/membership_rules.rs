//! Who may put whom into conversations, and what a non-member learns.

use crate::support::{Client, Nats, TestGateway};
use chatfabric_gateway::membership::ConversationLimits;
use chatfabric_nats::{ConvId, UserId};
use serde_json::{json, Value};

fn direct_id(a: &str, b: &str) -> String {
    ConvId::direct(&UserId::new(a).unwrap(), &UserId::new(b).unwrap()).to_string()
}

async fn request(c: &mut Client, frame: Value) -> Value {
    c.send(frame).await;
    c.reply().await
}

fn code(reply: &Value) -> (&str, &str) {
    (
        reply["op"].as_str().unwrap_or_default(),
        reply["code"].as_str().unwrap_or_default(),
    )
}

/// Every conversation id of `c`'s listing, walked `page` at a time.
async fn listing(c: &mut Client, page: usize) -> Vec<String> {
    let mut all = Vec::new();
    let mut frame = json!({"op":"conversations","limit":page});
    loop {
        let r = request(c, frame.clone()).await;
        assert_eq!(r["op"], "conversations", "{r}");
        let convs = r["conversations"].as_array().expect("list");
        assert!(convs.len() <= page, "{r}");
        all.extend(
            convs
                .iter()
                .map(|v| v["conv"].as_str().unwrap().to_string()),
        );
        match r["next"].as_str() {
            Some(next) => frame["after"] = json!(next),
            None => return all,
        }
    }
}

#[tokio::test]
async fn strangers_cannot_lock_a_user_out_by_filling_their_conversations() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.limits.conversations = ConversationLimits {
        per_user: 6,
        added_by_others: 3,
    };
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut mallory = Client::connect(&g.ws_url(), "mallory").await;
    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    let mut dave = Client::connect(&g.ws_url(), "dave").await;

    // Mallory puts bob into as many conversations as others may...
    let mut spam = Vec::new();
    for _ in 0..3 {
        spam.push(mallory.create_group(&["bob"]).await);
    }
    // ...and no further: the adder is refused, and nothing is created half-way.
    let r = request(
        &mut mallory,
        json!({"op":"create","kind":"group","members":["bob"],"ref":"g"}),
    )
    .await;
    assert_eq!(
        (code(&r), r["ref"].as_str()),
        (("error", "forbidden"), Some("g")),
        "{r}"
    );
    assert_eq!(listing(&mut mallory, 100).await.len(), 3);
    let own = mallory.create_group(&[]).await;
    let r = request(
        &mut mallory,
        json!({"op":"add_member","conv":own,"user":"bob"}),
    )
    .await;
    assert_eq!(code(&r), ("error", "forbidden"), "{r}");
    let r = request(
        &mut dave,
        json!({"op":"create","kind":"direct","with":"bob"}),
    )
    .await;
    assert_eq!(code(&r), ("error", "forbidden"), "{r}");

    // Bob's own creates keep working, up to his limit.
    let with_dave = request(
        &mut bob,
        json!({"op":"create","kind":"direct","with":"dave"}),
    )
    .await;
    assert_eq!(with_dave["op"], "conversation", "{with_dave}");
    bob.create_group(&["carol"]).await;
    bob.create_group(&[]).await;
    let r = request(&mut bob, json!({"op":"create","kind":"group","members":[]})).await;
    assert_eq!(code(&r), ("error", "invalid"), "{r}");
    // Re-creating an existing direct conversation is no new membership (dave's side too).
    let again = request(
        &mut dave,
        json!({"op":"create","kind":"direct","with":"bob"}),
    )
    .await;
    assert_eq!(
        again["conversation"]["conv"], with_dave["conversation"]["conv"],
        "{again}"
    );

    // His listing works page by page, each conversation once, in id order.
    let all = listing(&mut bob, 2).await;
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((all.len(), &all), (6, &sorted));
    assert_eq!(listing(&mut bob, 100).await, all);
    let r = request(&mut bob, json!({"op":"conversations","limit":0})).await;
    assert_eq!(code(&r), ("error", "invalid"), "{r}");

    // Leaving a group frees a place.
    let r = request(
        &mut bob,
        json!({"op":"remove_member","conv":spam[0],"user":"bob"}),
    )
    .await;
    assert_eq!(r["op"], "members", "{r}");
    bob.create_group(&[]).await;
}

#[tokio::test]
async fn a_non_member_gets_the_same_answer_whether_or_not_a_conversation_exists() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let group = alice.create_group(&["bob"]).await;
    let r = request(
        &mut alice,
        json!({"op":"create","kind":"direct","with":"bob"}),
    )
    .await;
    let direct = r["conversation"]["conv"].as_str().unwrap().to_string();
    assert_eq!(direct, direct_id("alice", "bob"));
    let mut mallory = Client::connect(&g.ws_url(), "mallory").await;

    let existing = [group.as_str(), direct.as_str()];
    let missing = ["g-0000000000000000", &direct_id("alice", "zed")];
    let ops = |conv: &str| {
        vec![
            json!({"op":"add_member","conv":conv,"user":"mallory","ref":"r"}),
            json!({"op":"remove_member","conv":conv,"user":"alice","ref":"r"}),
            json!({"op":"members","conv":conv,"ref":"r"}),
            json!({"op":"subscribe","conv":conv,"ref":"r"}),
            json!({"op":"history","conv":conv,"ref":"r"}),
            json!({"op":"read","conv":conv,"seq":1,"ref":"r"}),
            json!({"op":"typing","conv":conv,"state":"start","ref":"r"}),
            json!({"op":"send","conv":conv,"client_id":"r","body":"x"}),
        ]
    };
    for (i, op) in ops("x").iter().enumerate() {
        let mut answers = Vec::new();
        for conv in existing.iter().chain(missing.iter()) {
            let frame = &ops(conv)[i];
            let r = request(&mut mallory, frame.clone()).await;
            assert_eq!(code(&r), ("error", "forbidden"), "{frame}: {r}");
            answers.push(r);
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{}: {answers:?}",
            op["op"]
        );
    }
    // Over HTTP too.
    for conv in existing.iter().chain(missing.iter()) {
        let path = format!("/v1/conversations/{conv}/messages");
        let body = crate::support::fabric::http_get_auth(g.addr, &path, "mallory").await;
        assert!(body.contains(r#""code":"forbidden""#), "{conv}: {body}");
    }
}
