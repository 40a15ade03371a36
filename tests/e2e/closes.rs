//! Every way the gateway closes a connection ends it within the close grace, and the close code
//! reaches clients that keep sending.

use crate::support::hostile::{
    await_metric_at_most, close_code_while_sending, connect_tiny_with_token, established,
    token_expiring_in,
};
use crate::support::{fabric::token, Client, Nats, TestGateway};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const CONNECTIONS: &str = "chatfabric_gateway_connections ";

#[tokio::test]
async fn a_slow_consumer_kicked_while_a_reply_is_written_is_dropped_within_the_grace() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.limits.queue = 8;
    config.limits.close_grace = Duration::from_secs(1);
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["carol"]).await;
    // A history page of ~200 KB: far more than the kernel buffers for a reader that stops.
    let body = "x".repeat(2000);
    for i in 0..100 {
        alice.post(&conv, &format!("h{i}"), &body).await;
    }

    let carol = connect_tiny_with_token(&g, &token("carol")).await;
    let mut carol = Client::from_socket(carol, "carol");
    assert_eq!(carol.reply().await["op"], "ready");
    carol.subscribe(&conv, None).await;
    // Carol asks for the big page, many times over (several MB), and stops reading: her
    // connection blocks writing a reply once the kernel buffers are full.
    const PAGES: f64 = 40.0;
    for _ in 0..PAGES as usize {
        carol
            .send(json!({"op":"history","conv":conv,"limit":100}))
            .await;
    }
    let written = "chatfabric_gateway_frames_out_total{kind=\"history\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = 0.0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = g.metric(written).await;
        assert!(
            now < PAGES,
            "the kernel took all {PAGES} pages; make them more"
        );
        if now >= 1.0 && now == last {
            break; // no reply written for 200 ms: the connection is stuck in a reply
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replies never stalled"
        );
        last = now;
    }
    // Live messages fill her queue meanwhile: the fan-out kicks her as a slow consumer.
    for i in 0..20 {
        alice.post(&conv, &format!("l{i}"), "live").await;
    }
    g.await_metric(
        "chatfabric_gateway_closes_total{kind=\"slow_consumer\"}",
        1.0,
    )
    .await;
    // Within the grace (1 s) her connection is gone; only alice's is left.
    await_metric_at_most(&g, CONNECTIONS, 1.0).await;
    drop(carol);
}

#[tokio::test]
async fn a_flooding_client_that_keeps_sending_gets_4029() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    // Many refusals before the close: the gateway writes them in a burst, then closes.
    config.limits.rate = 1.0;
    config.limits.burst = 200.0;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let ws = connect_tiny_with_token(&g, &token("alice")).await;
    let ping = Message::Text(r#"{"op":"ping"}"#.into());
    assert_eq!(
        close_code_while_sending(ws, vec![], ping, Duration::ZERO).await,
        4029
    );
}

#[tokio::test]
async fn websocket_pings_count_against_the_rate_limit() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.limits.rate = 1.0;
    config.limits.burst = 5.0;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let ws = connect_tiny_with_token(&g, &token("alice")).await;
    let ping = Message::Ping(Vec::new().into());
    assert_eq!(
        close_code_while_sending(ws, vec![], ping, Duration::ZERO).await,
        4029
    );
    // A client within the limit is served.
    let mut ok = Client::connect(&g.ws_url(), "alice").await;
    ok.send_raw(Message::Ping(Vec::new().into())).await;
    ok.send(json!({"op":"ping","ref":"p"})).await;
    assert_eq!(ok.reply().await["op"], "pong");
}

/// A gateway whose rate limit a busy client never reaches.
async fn unlimited(nats: &Nats) -> TestGateway {
    let mut config = nats.config();
    config.limits.rate = 1e9;
    config.limits.burst = 1e9;
    TestGateway::start_with(nats, config, 8192).await
}

fn ping() -> Message {
    Message::Text(r#"{"op":"ping"}"#.into())
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_while_the_client_sends() {
    let nats = Nats::start().await;
    let g = unlimited(&nats).await;
    let ws = connect_tiny_with_token(&g, &token("alice")).await;
    // Pongs fill its receive window, then the oversized frame.
    let mut first: Vec<Message> = (0..500).map(|_| ping()).collect();
    first.push(Message::Text("x".repeat(20 * 1024).into()));
    assert_eq!(
        close_code_while_sending(ws, first, ping(), Duration::ZERO).await,
        1009
    );
}

#[tokio::test]
async fn an_expired_token_closes_with_4001_while_the_client_sends() {
    let nats = Nats::start().await;
    let g = unlimited(&nats).await;
    let ws = connect_tiny_with_token(&g, &token_expiring_in("alice", 2)).await;
    // Not reading when the token expires.
    let quiet = Duration::from_secs(3);
    assert_eq!(
        close_code_while_sending(ws, vec![], ping(), quiet).await,
        4001
    );
}

#[tokio::test]
async fn a_shutdown_closes_with_1001_while_the_client_sends() {
    let nats = Nats::start().await;
    let g = unlimited(&nats).await;
    let ws = connect_tiny_with_token(&g, &token("alice")).await;
    // Not reading when the gateway stops.
    let quiet = Duration::from_secs(3);
    let busy = tokio::spawn(close_code_while_sending(ws, vec![], ping(), quiet));
    // Stop once the client is being served.
    g.await_metric("chatfabric_gateway_frames_in_total{kind=\"ping\"}", 1000.0)
        .await;
    g.stop().await;
    assert_eq!(busy.await.unwrap(), 1001);
}

#[tokio::test]
async fn a_client_close_is_answered() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut ws = connect_tiny_with_token(&g, &token("alice")).await;
    ws.next().await; // ready
    ws.close(None).await.unwrap();
    // The gateway answers the close frame before it drops the connection.
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(_)) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    })
    .await
    .expect("in time");
    assert!(answered);
    await_metric_at_most(&g, CONNECTIONS, 0.0).await;
    let _ = ws.send(Message::Text("late".into())).await;
}

#[tokio::test]
async fn a_slow_sse_reader_is_disconnected_within_the_grace() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.limits.queue = 8;
    config.limits.close_grace = Duration::from_secs(1);
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let room = alice.create_group(&["bob"]).await;

    // Bob opens the stream through a socket with a tiny receive buffer and never reads.
    let mut s = g.tiny_buffer_socket().await;
    let bob_end = s.local_addr().unwrap();
    let req = format!(
        "GET /v1/events?conv={room} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        token("bob")
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
        .await
        .unwrap();
    let body = "x".repeat(4000);
    let kicked = "chatfabric_gateway_closes_total{kind=\"slow_consumer\"}";
    let mut i = 0;
    while g.metric(kicked).await < 1.0 {
        for _ in 0..100 {
            alice.post(&room, &format!("k{i}"), &body).await;
            i += 1;
        }
        assert!(i < 10_000, "bob was never kicked");
    }
    assert!(
        established(g.addr, bob_end),
        "the connection is open when kicked"
    );
    // Within the grace (1 s), the gateway's side of the connection is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while established(g.addr, bob_end) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ESTABLISHED 10 s after the kick"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(s);
}

#[tokio::test]
async fn an_sse_stream_ends_when_its_token_expires() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let room = alice.create_group(&["bob"]).await;
    let query = format!("?conv={room}");
    let mut sse = crate::support::sse::SseClient::connect_with_token(
        g.addr,
        &token_expiring_in("bob", 2),
        &query,
        None,
    )
    .await;
    assert_eq!(sse.status, 200);
    alice.post(&room, "k1", "before").await;
    assert_eq!(sse.msg().await.data["body"], "before");
    // At `exp` the stream says why and ends, like a WebSocket closing with 4001.
    let e = sse.next().await.expect("an error event");
    assert_eq!(
        (e.kind.as_str(), &e.data["code"]),
        ("error", &json!("unauthenticated"))
    );
    assert!(sse.next().await.is_none(), "the stream ended");
}

#[tokio::test]
async fn a_shutdown_closes_a_connection_still_waiting_for_auth_with_1001() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let (ws, _) = tokio_tungstenite::connect_async(g.ws_url()).await.unwrap();
    let waiting = tokio::spawn(async move {
        let mut c = Client::from_socket(ws, "anon");
        c.closed().await
    });
    // Before the 10 s auth deadline, and without waiting for it.
    let started = tokio::time::Instant::now();
    g.stop().await;
    assert_eq!(waiting.await.unwrap(), 1001);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

/// Sends `{"op":"ping"}` at `per_sec` frames per second (reading everything that comes back) for
/// at most `secs`; the close code, if the gateway closed the connection meanwhile.
async fn close_code_at_pace(g: &TestGateway, per_sec: u64, secs: u64) -> Option<u16> {
    let ws = crate::support::hostile::connect_with_token(&g.ws_url(), &token("alice"))
        .await
        .expect("connect");
    let (mut tx, mut rx) = ws.split();
    let reader = tokio::spawn(async move {
        while let Some(frame) = rx.next().await {
            match frame {
                Ok(Message::Close(c)) => return Some(c.map_or(1005, |c| u16::from(c.code))),
                Ok(_) => {}
                Err(_) => return Some(1006),
            }
        }
        Some(1006)
    });
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < end && !reader.is_finished() {
        tick.tick().await;
        if tx
            .send(Message::Text(r#"{"op":"ping"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    if reader.is_finished() {
        reader.await.expect("reader")
    } else {
        reader.abort();
        None
    }
}

#[tokio::test]
async fn a_client_that_keeps_exceeding_the_rate_is_closed_with_4029() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    // The defaults: 50 frames/s, bursts of 100.
    config.limits.rate = 50.0;
    config.limits.burst = 100.0;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    // Four times the rate: most frames are refused but never 100 in a row.
    assert_eq!(close_code_at_pace(&g, 200, 12).await, Some(4029));
    // Within the rate, the same client is served as long as it likes.
    assert_eq!(close_code_at_pace(&g, 40, 4).await, None);
}
