//! Bots and devices on NATS, against a nats-server running the shipped auth configuration.

use std::time::Duration;

use bytes::Bytes;
use chatfabric_nats::wire::{now_ms, ConvKind, ConversationInfo, Membership};
use chatfabric_nats::{subject, ConvId, UserId};
use serde_json::{json, Value};

use crate::support::{sse::SseClient, Client, Nats, TestGateway};

const BOT_URL_CREDS: &str = "echo-bot:echo-bot-dev-password@";

/// Creates conversation `conv` with `members` by writing the membership bucket directly, as the
/// gateway does (the shipped auth config names the fixed conversation `lobby`).
pub(crate) async fn seed(nats: &Nats, conv: &str, members: &[&str]) {
    let fabric = nats.fabric("seed").await;
    let c = ConvId::new(conv).unwrap();
    let creator = UserId::new(members[0]).unwrap();
    let info = ConversationInfo {
        conv: c.clone(),
        kind: ConvKind::Group,
        created_by: creator.clone(),
        created_at: now_ms(),
        title: None,
    };
    fabric
        .convs
        .put(
            subject::conv_key(&c),
            serde_json::to_vec(&info).unwrap().into(),
        )
        .await
        .unwrap();
    for m in members {
        let record = Membership {
            added_by: creator.clone(),
            added_at: now_ms(),
        };
        let key = subject::member_key(&c, &UserId::new(*m).unwrap());
        fabric
            .convs
            .put(key, serde_json::to_vec(&record).unwrap().into())
            .await
            .unwrap();
    }
}

pub(crate) async fn bot_client(nats: &Nats) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(
        "echo-bot".into(),
        "echo-bot-dev-password".into(),
    )
    .custom_inbox_prefix("_INBOX.echo-bot")
    .connect(nats.url_as(""))
    .await
    .expect("the bot connects")
}

async fn bot_post(
    bot: &async_nats::Client,
    subject: &str,
    payload: Value,
) -> Result<Value, String> {
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        bot.request(subject.to_string(), Bytes::from(payload.to_string())),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(serde_json::from_slice(&reply.payload).unwrap())
}

#[tokio::test]
async fn bot_posts_reach_websocket_and_sse_clients_in_order() {
    let nats = Nats::start().await;
    seed(&nats, "lobby", &["alice", "bob", "echo-bot"]).await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    alice.subscribe("lobby", None).await;
    let mut sse = SseClient::connect(g.addr, "bob", "?conv=lobby", None).await;
    assert_eq!(sse.next().await.unwrap().kind, "subscribed");

    let bot = bot_client(&nats).await;
    let mut seqs = Vec::new();
    for i in 0..20 {
        let ack = bot_post(
            &bot,
            "chat.in.lobby.echo-bot",
            json!({"client_id":format!("b{i}"),"body":format!("tick {i}")}),
        )
        .await
        .unwrap();
        assert_eq!(ack["op"], "ack", "{ack}");
        seqs.push(ack["seq"].as_u64().unwrap());
    }
    // A retry with the same client id is stored once.
    let again = bot_post(
        &bot,
        "chat.in.lobby.echo-bot",
        json!({"client_id":"b0","body":"tick 0"}),
    )
    .await
    .unwrap();
    assert_eq!(
        (again["seq"].as_u64(), again["duplicate"].as_bool()),
        (Some(seqs[0]), Some(true))
    );

    let got = alice.msgs(20).await;
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
    for (i, seq) in seqs.iter().enumerate() {
        let e = sse.msg().await;
        assert_eq!(
            (e.data["seq"].as_u64(), e.data["sender"].as_str()),
            (Some(*seq), Some("echo-bot"))
        );
        assert_eq!(e.data["body"], format!("tick {i}"));
    }
    // The bot reads history through its own read subject.
    let page = bot_post(&bot, "chat.read.lobby.echo-bot", json!({"limit":3}))
        .await
        .unwrap();
    assert_eq!(page["messages"][0]["seq"].as_u64(), seqs.last().copied());
    alice.no_msg_within(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn impersonation_and_ungranted_posts_are_refused_by_the_server() {
    let nats = Nats::start().await;
    seed(&nats, "lobby", &["alice", "echo-bot"]).await;
    seed(&nats, "secret", &["alice", "echo-bot"]).await; // a member, but not granted on NATS
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    alice.subscribe("lobby", None).await;
    alice.subscribe("secret", None).await;

    let bot = bot_client(&nats).await;
    for subject in [
        "chat.in.lobby.alice",
        "chat.in.secret.echo-bot",
        "chat.msg.0.lobby",
        "chat.read.secret.echo-bot",
    ] {
        let r = bot_post(&bot, subject, json!({"client_id":"x","body":"sneaky"})).await;
        assert!(
            r.is_err(),
            "{subject} should be refused by nats-server, got {r:?}"
        );
    }
    // It cannot listen to conversations it is not granted either: the server refuses the
    // subscription, so nothing arrives even when alice posts.
    let mut snoop = bot.subscribe("chat.live.*.secret").await.unwrap();
    alice.post("secret", "s1", "private").await;
    assert_eq!(alice.msg().await["body"], "private");
    assert!(tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut snoop)
    )
    .await
    .map_or(true, |m| m.is_none()));
    alice.no_msg_within(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn malformed_and_oversized_bot_payloads_are_rejected_and_counted() {
    let nats = Nats::start().await;
    seed(&nats, "lobby", &["alice", "echo-bot"]).await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    alice.subscribe("lobby", None).await;
    let bot = bot_client(&nats).await;

    let raw = |payload: &'static [u8]| {
        let bot = bot.clone();
        async move {
            let r = bot
                .request("chat.in.lobby.echo-bot", Bytes::from_static(payload))
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&r.payload).unwrap()
        }
    };
    assert_eq!(raw(b"not json").await["code"], "invalid");
    assert_eq!(raw(br#"{"body":"no client id"}"#).await["code"], "invalid");
    assert_eq!(
        raw(br#"{"client_id":"x","body":"","extra":1}"#).await["code"],
        "invalid"
    );
    let big = json!({"client_id":"big","body":"x".repeat(5000)});
    assert_eq!(
        bot_post(&bot, "chat.in.lobby.echo-bot", big).await.unwrap()["code"],
        "too_large"
    );
    let huge = json!({"client_id":"huge","body":"x".repeat(100_000)});
    assert_eq!(
        bot_post(&bot, "chat.in.lobby.echo-bot", huge)
            .await
            .unwrap()["code"],
        "too_large"
    );

    alice.no_msg_within(Duration::from_millis(300)).await;
    let body = crate::support::fabric::http_get(g.addr, "/metrics").await;
    let rejected: f64 = body
        .lines()
        .filter(|l| l.starts_with("chatfabric_gateway_ingest_rejected_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let lines: Vec<&str> = body.lines().filter(|l| l.contains("ingest")).collect();
    assert_eq!(rejected, 5.0, "{lines:?}");
}

#[tokio::test]
async fn the_rust_echo_bot_answers() {
    let nats = Nats::start().await;
    seed(&nats, "lobby", &["alice", "echo-bot"]).await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    alice.subscribe("lobby", None).await;
    let url = nats.url_as(BOT_URL_CREDS);
    let mut bot = crate::support::spawn_chatfabric([
        "bot",
        "--nats-url",
        &url,
        "--bot",
        "echo-bot",
        "--conv",
        "lobby",
    ]);
    // The bot may not be subscribed yet: post until its echo arrives.
    let mut echoed = None;
    for i in 0..50 {
        alice.post("lobby", &format!("a{i}"), "ping").await;
        let m = alice.msg().await; // our own message
        assert_eq!(m["sender"], "alice");
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), alice.msg()).await {
            echoed = Some(m);
            break;
        }
    }
    bot.kill();
    let echo = echoed.expect("the bot echoed");
    assert_eq!(
        (echo["sender"].as_str(), echo["body"].as_str()),
        (Some("echo-bot"), Some("echo: ping"))
    );
}

#[tokio::test]
#[cfg_attr(
    not(has_nats_py),
    ignore = "needs python3 with nats-py when built: pip install nats-py, then touch build.rs"
)]
async fn the_python_snippet_posts_and_reads() {
    let nats = Nats::start().await;
    seed(&nats, "lobby", &["alice", "echo-bot"]).await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    alice.subscribe("lobby", None).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bot.py");
    let out = tokio::process::Command::new("python3")
        .args([
            script,
            &nats.url_as(BOT_URL_CREDS),
            "echo-bot",
            "lobby",
            "from python",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ack: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(ack["op"], "ack");
    let m = alice.msg().await;
    assert_eq!(
        (m["sender"].as_str(), m["body"].as_str()),
        (Some("echo-bot"), Some("from python"))
    );
    assert_eq!(m["seq"], ack["seq"]);
}

#[tokio::test]
async fn a_flooding_bot_is_rate_limited_like_a_user() {
    let nats = Nats::start().await;
    seed(&nats, "lobby", &["alice", "echo-bot"]).await;
    let mut config = nats.config();
    config.limits.rate = 1.0;
    config.limits.burst = 5.0;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let bot = bot_client(&nats).await;
    let posts = (0..20).map(|i| {
        let bot = bot.clone();
        async move {
            let post = json!({"client_id":format!("flood-{i}"),"body":"x"});
            bot_post(&bot, "chat.in.lobby.echo-bot", post).await
        }
    });
    let answers = futures::future::join_all(posts).await;
    let codes: Vec<String> = answers
        .iter()
        .map(|a| match a {
            Ok(v) if v["op"] == "ack" => "ack".to_string(),
            Ok(v) => v["code"].as_str().unwrap_or("?").to_string(),
            Err(e) => e.clone(),
        })
        .collect();
    let acked = codes.iter().filter(|c| *c == "ack").count();
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    // The burst (and at most a token or two refilled meanwhile) is stored; the rest is refused.
    assert!((5..=7).contains(&acked), "{codes:?}");
    assert_eq!(acked + limited, 20, "{codes:?}");
    drop(g);
}
