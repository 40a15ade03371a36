//! A gateway whose NATS subscription drops messages still delivers a gap-free sequence.

use crate::support::{Client, Nats, TestGateway};
use futures::future::join_all;

#[tokio::test]
async fn dropped_live_messages_are_filled_from_jetstream() {
    let nats = Nats::start().await;
    // A subscription that buffers 2 messages: a burst overflows it and the client library drops.
    let lossy = TestGateway::start_with(&nats, nats.config(), 2).await;
    let sender_gw = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&sender_gw.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let mut bob = Client::connect(&lossy.ws_url(), "bob").await;
    bob.subscribe(&conv, None).await;

    // Publish a burst straight into JetStream, faster than any WebSocket client could.
    let fabric = nats.fabric("burst").await;
    let conv_id = chatfabric_nats::ConvId::new(conv.clone()).expect("conv id");
    let acks = join_all((0..500).map(|i| {
        let fabric = fabric.clone();
        let conv_id = conv_id.clone();
        async move {
            chatfabric_gateway::send::publish(
                &fabric,
                &chatfabric_gateway::metrics::Metrics::new(&mut Default::default()),
                chatfabric_gateway::send::Draft {
                    conv: conv_id,
                    sender: chatfabric_nats::UserId::new("alice").expect("id"),
                    via: None,
                    client_id: format!("burst-{i}"),
                    body: format!("{i}"),
                },
                std::time::Duration::from_secs(10),
            )
            .await
            .expect("stored")
            .seq
        }
    }))
    .await;
    let mut stored = acks;
    stored.sort_unstable();

    let got = bob.msgs(500).await; // asserts the prev chain: no gap, no reorder
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), stored);
    assert!(
        lossy.metric("chatfabric_gateway_gap_fills").await >= 1.0,
        "the burst should have overflowed the 2-message subscription"
    );
}
