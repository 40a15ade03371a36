//! Bad input gets its documented error or close code, and never reaches anyone else.

use crate::support::{fabric::token, Client, Nats, TestGateway};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

async fn raw(url: &str) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    Client::from_socket(ws, "anon")
}

#[tokio::test]
async fn malformed_unknown_and_invalid_frames_get_errors() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    bob.subscribe(&conv, None).await;

    let cases = [
        (r#"{"op":"send","conv":"#.to_string(), "bad_frame"),
        ("[]".into(), "bad_frame"),
        (r#"{"op":"teleport"}"#.into(), "unknown_op"),
        (r#"{"op":"send","conv":"c"}"#.into(), "invalid"),
        (r#"{"op":"subscribe","conv":"a.>"}"#.into(), "invalid"),
        (
            json!({"op":"send","conv":conv,"client_id":"","body":"x"}).to_string(),
            "invalid",
        ),
        (
            json!({"op":"send","conv":conv,"client_id":"k","body":""}).to_string(),
            "invalid",
        ),
        (
            json!({"op":"send","conv":conv,"client_id":"k","body":"x".repeat(5000)}).to_string(),
            "too_large",
        ),
        (r#"{"op":"auth","token":"x"}"#.into(), "unauthenticated"),
    ];
    for (frame, code) in cases {
        alice.send_raw(Message::Text(frame.clone().into())).await;
        let r = alice.reply().await;
        assert_eq!(
            (r["op"].as_str(), r["code"].as_str()),
            (Some("error"), Some(code)),
            "{frame}"
        );
    }
    bob.no_msg_within(Duration::from_millis(300)).await;
    // The connection is still usable.
    alice.post(&conv, "ok", "still here").await;
    assert_eq!(bob.msg().await["body"], "still here");
}

#[tokio::test]
async fn errors_of_invalid_frames_echo_their_ref() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let cases = [
        (
            json!({"op":"create","kind":"direct","with":"not valid!","ref":"c1"}),
            "c1",
        ),
        (json!({"op":"members","conv":"a.b","ref":"m1"}), "m1"),
        // A send's error carries its client_id, how clients match it to the send.
        (
            json!({"op":"send","conv":"a b","client_id":"k-9","body":"x"}),
            "k-9",
        ),
    ];
    for (frame, reference) in cases {
        alice.send(frame.clone()).await;
        let r = alice.reply().await;
        assert_eq!(
            (r["code"].as_str(), r["ref"].as_str()),
            (Some("invalid"), Some(reference)),
            "{frame}"
        );
    }
}

#[tokio::test]
async fn oversized_and_binary_frames_close_the_connection() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut big = Client::connect(&g.ws_url(), "alice").await;
    big.send_raw(Message::Text("x".repeat(20 * 1024).into()))
        .await;
    assert_eq!(big.closed().await, 1009);

    let mut bin = Client::connect(&g.ws_url(), "alice").await;
    bin.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(bin.closed().await, 1003);

    // The gateway is fine.
    let mut ok = Client::connect(&g.ws_url(), "alice").await;
    ok.send(json!({"op":"ping","ref":"p"})).await;
    assert_eq!(ok.reply().await["op"], "pong");
}

#[tokio::test]
async fn missing_forged_and_expired_tokens_are_refused() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.limits.auth_timeout = Duration::from_millis(300);
    let g = TestGateway::start_with(&nats, config, 8192).await;

    // Forged (wrong secret) and expired tokens in the header: 401 before the upgrade.
    let forged = chatfabric_gateway::auth::mint_hs256(
        b"wrong",
        &chatfabric_nats::UserId::new("alice").unwrap(),
        60,
    )
    .unwrap();
    let expired = expired_token();
    for bad in [forged.clone(), expired.clone(), "garbage".into()] {
        let mut req = g.ws_url().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {bad}").parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401)
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }
    // No token and no auth frame: closed with 4001 after the auth timeout.
    let mut silent = raw(&g.ws_url()).await;
    assert_eq!(silent.closed().await, 4001);
    // A first frame that is not auth.
    let mut rude = raw(&g.ws_url()).await;
    rude.send(json!({"op":"ping"})).await;
    assert_eq!(rude.closed().await, 4001);
    // A forged token in the auth frame.
    let mut forger = raw(&g.ws_url()).await;
    forger.send(json!({"op":"auth","token":forged})).await;
    assert_eq!(forger.closed().await, 4001);
    // A valid auth frame works.
    let mut good = raw(&g.ws_url()).await;
    good.send(json!({"op":"auth","token":token("alice")})).await;
    assert_eq!(good.reply().await["op"], "ready");
}

fn expired_token() -> String {
    // The gateway allows 5 s of clock skew; two minutes ago is expired.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 120;
    let key = jsonwebtoken::EncodingKey::from_secret(crate::support::fabric::SECRET);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"alice","exp":exp}),
        &key,
    )
    .unwrap()
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.limits.rate = 1.0;
    config.limits.burst = 5.0;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut flooder = Client::connect(&g.ws_url(), "alice").await;
    for _ in 0..20 {
        flooder
            .send_raw(Message::Text(r#"{"op":"ping"}"#.into()))
            .await;
    }
    let (frames, close) = flooder.frames_until_close().await;
    assert_eq!(close, 4029);
    let pongs = frames.iter().filter(|f| f["op"] == "pong").count();
    assert_eq!(pongs, 5, "the burst is served: {frames:?}");
    assert!(
        frames.iter().any(|f| f["code"] == "rate_limited"),
        "{frames:?}"
    );
}
