//! Fixtures for hostile clients: conversations with many stored messages, and sockets that
//! never read.

use std::time::Duration;

use chatfabric_nats::{ConvId, Fabric, UserId};
use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::TestGateway;

/// Stores `n` messages from `alice` with `body` in `conv` straight through JetStream, a few
/// hundred at a time; returns their seqs, ascending.
pub async fn store_messages(fabric: &Fabric, conv: &str, n: usize, body: &str) -> Vec<u64> {
    let conv = ConvId::new(conv).expect("conv");
    let metrics = chatfabric_gateway::metrics::Metrics::new(&mut Default::default());
    let mut seqs = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
        let acks = join_all(chunk.iter().map(|i| {
            chatfabric_gateway::send::publish(
                fabric,
                &metrics,
                conv.clone(),
                UserId::new("alice").expect("id"),
                format!("s{i}"),
                body.to_string(),
                Duration::from_secs(10),
            )
        }))
        .await;
        seqs.extend(acks.into_iter().map(|a| a.expect("stored").seq));
    }
    seqs.sort_unstable();
    seqs
}

/// An authenticated WebSocket of `user` over a socket with a tiny receive buffer, past `ready`.
/// The test sends on it and reads from it only when it chooses to.
pub async fn silent_socket(g: &TestGateway, user: &str) -> WebSocketStream<TcpStream> {
    let stream = g.tiny_buffer_socket().await;
    let mut req = g.ws_url().into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", super::fabric::token(user))
            .parse()
            .expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("ws connect");
    let ready = ws.next().await;
    assert!(
        matches!(&ready, Some(Ok(Message::Text(t))) if t.contains("\"ready\"")),
        "{ready:?}"
    );
    ws
}

/// Sends `frame` (a JSON text) on `ws` `times` times without reading.
pub async fn pipeline(ws: &mut WebSocketStream<TcpStream>, frame: &str, times: usize) {
    for _ in 0..times {
        ws.feed(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }
    ws.flush().await.expect("flush");
}

/// Reads `ws` until the server closes it; returns the close code (0 if it ended without one).
pub async fn close_code(ws: &mut WebSocketStream<TcpStream>) -> u16 {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Close(Some(c))) => return u16::from(c.code),
                Ok(_) => {}
                Err(_) => return 0,
            }
        }
        0
    })
    .await
    .expect("the stream ends")
}
