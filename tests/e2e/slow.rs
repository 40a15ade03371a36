//! A slow client is closed; the others keep receiving.

use crate::support::{Client, Nats, TestGateway};
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_slow_client_is_closed_while_a_fast_one_keeps_receiving() {
    let nats = Nats::start().await;
    let g = TestGateway::start_for_slow_readers(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob", "carol"]).await;

    // Carol's socket has a tiny receive buffer and she never reads.
    let stream = g.tiny_buffer_socket().await;
    let mut req = g.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", crate::support::fabric::token("carol"))
            .parse()
            .unwrap(),
    );
    let (mut carol, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    let _ready = carol.next().await;
    carol
        .send(Message::Text(
            format!(r#"{{"op":"subscribe","conv":"{conv}"}}"#).into(),
        ))
        .await
        .unwrap();
    let _subscribed = carol.next().await;

    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    bob.subscribe(&conv, None).await;
    // More than the kernel buffers on both sides of loopback hold (several MB).
    let n = 2500;
    let bob_reads = tokio::spawn(async move { bob.msgs(n).await.len() });
    let body = "x".repeat(4000);
    for i in 0..n {
        alice.post(&conv, &format!("k{i}"), &body).await;
    }
    assert_eq!(
        bob_reads.await.unwrap(),
        n,
        "bob got every message, in order"
    );

    // The gateway gave up on carol while her socket was full.
    g.await_metric(
        "chatfabric_gateway_closes_total{kind=\"slow_consumer\"}",
        1.0,
    )
    .await;
    // Carol now reads what the kernel buffered, and finds the close code at the end.
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = carol.next().await {
            if let Ok(Message::Close(Some(c))) = frame {
                return u16::from(c.code);
            }
        }
        0
    })
    .await
    .expect("carol's stream ends");
    assert_eq!(code, 4008);
}
