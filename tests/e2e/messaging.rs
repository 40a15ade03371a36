//! Sending, receiving, idempotent retries and resume across gateways.

use crate::support::{Client, Nats, TestGateway};
use std::time::Duration;

#[tokio::test]
async fn two_users_on_two_gateways_exchange_messages_in_order() {
    let nats = Nats::start().await;
    let (g1, g2) = TestGateway::pair(&nats).await;
    let mut alice = Client::connect(&g1.ws_url(), "alice").await;
    let mut bob = Client::connect(&g2.ws_url(), "bob").await;
    let conv = alice.create_group(&["bob"]).await;
    alice.subscribe(&conv, None).await;
    bob.subscribe(&conv, None).await;

    for i in 0..50 {
        let (who, client) = if i % 2 == 0 {
            ("a", &mut alice)
        } else {
            ("b", &mut bob)
        };
        client
            .post(&conv, &format!("{who}{i}"), &format!("m{i}"))
            .await;
    }
    let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let got_a: Vec<String> = alice.msgs(50).await.into_iter().map(|(_, b)| b).collect();
    let got_b = bob.msgs(50).await;
    assert_eq!(got_a, want);
    assert_eq!(
        got_b.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
        want
    );
    alice.no_msg_within(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_retried_send_is_stored_once() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    let conv = alice.create_group(&["bob"]).await;
    bob.subscribe(&conv, None).await;

    let (seq, dup) = alice.post(&conv, "same-id", "hello").await;
    assert!(!dup);
    let (seq2, dup2) = alice.post(&conv, "same-id", "hello").await;
    assert_eq!((seq2, dup2), (seq, true), "a retry acks the original");
    // The same client id from another user is a different message.
    let (seq3, dup3) = bob.post(&conv, "same-id", "from bob").await;
    assert!(!dup3 && seq3 > seq);

    let got = bob.msgs(2).await;
    assert_eq!(got, vec![(seq, "hello".into()), (seq3, "from bob".into())]);
    bob.no_msg_within(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn resume_on_another_gateway_is_gap_and_duplicate_free() {
    let nats = Nats::start().await;
    let (g1, g2) = TestGateway::pair(&nats).await;
    let mut alice = Client::connect(&g1.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let mut bob = Client::connect(&g1.ws_url(), "bob").await;
    bob.subscribe(&conv, None).await;
    alice.post_numbered(&conv, 0..10).await;
    let seen = bob.msgs(5).await;
    let cursor = seen.last().expect("five messages").0;
    drop(bob); // disconnect having read only half

    // While bob is away, more messages arrive.
    alice.post_numbered(&conv, 10..20).await;
    let mut bob = Client::connect(&g2.ws_url(), "bob").await;
    assert_eq!(bob.subscribe(&conv, Some(cursor)).await, cursor);
    alice.post_numbered(&conv, 20..25).await;
    let rest = bob.msgs(20).await;
    assert!(
        rest.first().is_some_and(|(seq, _)| *seq > cursor),
        "the replay starts right after the cursor"
    );
    let bodies: Vec<String> = rest.into_iter().map(|(_, b)| b).collect();
    assert_eq!(bodies, (5..25).map(|i| format!("m{i}")).collect::<Vec<_>>());
    bob.no_msg_within(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn resume_far_behind_replays_from_jetstream() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    // Keep the conversation live on this gateway so the ring is in play, and overflow it.
    alice.subscribe(&conv, None).await;
    let seqs = alice.post_numbered(&conv, 0..100).await;
    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    bob.subscribe(&conv, Some(seqs[9])).await;
    let got = bob.msgs(90).await;
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        seqs[10..].to_vec()
    );
    assert!(g.metric("chatfabric_gateway_fetched_messages").await >= 90.0 - 32.0);
}

#[tokio::test]
async fn a_gateway_shutdown_closes_with_1001_and_clients_resume_elsewhere() {
    let nats = Nats::start().await;
    let (g1, g2) = TestGateway::pair(&nats).await;
    let mut alice = Client::connect(&g2.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let mut bob = Client::connect(&g1.ws_url(), "bob").await;
    bob.subscribe(&conv, None).await;
    let (first, _) = alice.post(&conv, "k0", "m0").await;
    assert_eq!(bob.msg().await["seq"], first);

    g1.stop().await;
    assert_eq!(bob.closed().await, 1001);
    alice.post(&conv, "k1", "m1").await;
    let mut bob = Client::connect(&g2.ws_url(), "bob").await;
    bob.subscribe(&conv, Some(first)).await;
    assert_eq!(bob.msg().await["body"], "m1");
}
