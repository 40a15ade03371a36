//! Heavy traffic for the resource limits: conversations with many stored messages, and sockets
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
                chatfabric_gateway::send::Draft {
                    conv: conv.clone(),
                    sender: UserId::new("alice").expect("id"),
                    via: None,
                    client_id: format!("s{i}"),
                    body: body.to_string(),
                },
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

/// Runs a persister into `nats`'s history store until its watermark reaches `seq`; it keeps
/// running until the returned token is cancelled.
pub async fn persist_up_to(nats: &super::Nats, seq: u64) -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    let config = chatfabric_persister::DrainConfig {
        watermark_interval: Duration::from_millis(20),
        ..Default::default()
    };
    tokio::spawn(chatfabric_persister::run(
        nats.fabric_as(chatfabric_nats::permissions::Role::Persister, "drain", 8192)
            .await
            .0,
        nats.history.clone(),
        config,
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while nats.history.watermark(0).await.expect("watermark") < seq {
        assert!(
            tokio::time::Instant::now() < deadline,
            "persister never reached {seq}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop
}

/// Makes `user` a member of `n` new groups (written straight into the bucket, as `create`
/// would, with titles of 40 bytes), and `peer` a member of the last one; returns their ids.
pub async fn seed_memberships(fabric: &Fabric, user: &str, peer: &str, n: usize) -> Vec<String> {
    use chatfabric_nats::subject;
    use chatfabric_nats::wire::{ConvKind, ConversationInfo, Membership};
    let user = UserId::new(user).expect("user");
    let peer = UserId::new(peer).expect("peer");
    let convs: Vec<ConvId> = (0..n)
        .map(|i| ConvId::new(format!("w-{i}")).expect("conv"))
        .collect();
    let record = serde_json::to_vec(&Membership {
        added_by: user.clone(),
        added_at: 0,
    })
    .expect("json");
    let mut puts = Vec::new();
    for conv in &convs {
        let info = ConversationInfo {
            conv: conv.clone(),
            kind: ConvKind::Group,
            created_by: user.clone(),
            created_at: 0,
            title: Some(format!("{:<40}", conv.as_str())),
        };
        puts.push((
            subject::conv_key(conv),
            serde_json::to_vec(&info).expect("json"),
        ));
        puts.push((subject::member_key(conv, &user), record.clone()));
    }
    let last = &convs[n - 1];
    puts.push((subject::member_key(last, &peer), record.clone()));
    puts.push((
        subject::user_convs_key(&user),
        serde_json::to_vec(&convs).expect("json"),
    ));
    puts.push((
        subject::user_convs_key(&peer),
        serde_json::to_vec(&[last]).expect("json"),
    ));
    for chunk in puts.chunks(500) {
        futures::future::try_join_all(
            chunk
                .iter()
                .map(|(key, value)| fabric.convs.put(key.clone(), value.clone().into())),
        )
        .await
        .expect("seed memberships");
    }
    convs.iter().map(|c| c.as_str().to_string()).collect()
}
