//! The fabric never acts beyond a requester's rights: a bot cannot make the gateway publish to a
//! subject of its choosing (the reply subject of its request), and no role's NATS user may purge or
//! delete what the fabric keeps. Run against the shipped `nats/config/auth.conf`.

use std::time::Duration;

use bytes::Bytes;
use chatfabric_nats::permissions::Role;
use serde_json::{json, Value};

use crate::bots::{bot_client, seed};
use crate::support::{Client, Nats, TestGateway};

/// Reply subjects an attacker would pick: become a member of any conversation, wipe the
/// memberships or the messages in flight, forge presence, forge a stored message, or answer
/// into another bot's inbox.
const FOREIGN_REPLIES: [&str; 7] = [
    "$KV.CHAT_CONVS.m.secret.echo-bot",
    "$JS.API.STREAM.PURGE.KV_CHAT_CONVS",
    "$JS.API.STREAM.PURGE.CHAT_MSGS_0",
    "$KV.CHAT_PRESENCE.dev.mallory.forged-gateway",
    "chat.msg.0.lobby",
    "_INBOX.other-bot.x",
    "_INBOX.echo-bot.*",
];

#[derive(Debug, PartialEq)]
struct StreamCounts {
    messages: u64,
    last: u64,
}

async fn counts(nats: &Nats, stream: &str) -> StreamCounts {
    let js = async_nats::jetstream::new(admin(nats).await);
    let mut s = js.get_stream(stream).await.expect("stream exists");
    let info = s.info().await.expect("stream info");
    StreamCounts {
        messages: info.state.messages,
        last: info.state.last_sequence,
    }
}

/// The operators' user of the shipped config, which may do everything.
async fn admin(nats: &Nats) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-dev-password".into())
        .connect(nats.url_as(""))
        .await
        .expect("admin connects")
}

#[tokio::test]
async fn a_bot_cannot_choose_where_the_gateway_answers() {
    let nats = Nats::start().await;
    // The bot is granted `lobby` on NATS but is a member of nothing, so the fabric refuses its
    // own requests; `secret` is a conversation it wants into.
    seed(&nats, "lobby", &["alice", "bob"]).await;
    seed(&nats, "secret", &["alice"]).await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    alice.subscribe("lobby", None).await;
    let (first, _) = alice.post("lobby", "a1", "before").await;
    assert_eq!(alice.msg().await["seq"], first);
    let messages_before = counts(&nats, "CHAT_MSGS_0").await;
    let convs_before = counts(&nats, "KV_CHAT_CONVS").await;

    let bot = bot_client(&nats).await;
    let post = Bytes::from(json!({"client_id":"x","body":"sneaky"}).to_string());
    for reply in FOREIGN_REPLIES {
        for subject in ["chat.read.lobby.echo-bot", "chat.in.lobby.echo-bot"] {
            bot.publish_with_reply(subject, reply, post.clone())
                .await
                .expect("publish");
        }
    }
    bot.flush().await.expect("flush");
    let dropped = FOREIGN_REPLIES.len() * 2;
    g.await_metric(
        "chatfabric_gateway_ingest_rejected_total{kind=\"reply_subject\"}",
        dropped as f64,
    )
    .await;
    // Its own inbox still gets the answer: the refusal it earned.
    let own = bot
        .request("chat.read.lobby.echo-bot", Bytes::new())
        .await
        .expect("an answer under its own inbox");
    let own: Value = serde_json::from_slice(&own.payload).expect("json");
    assert_eq!(own["code"], "forbidden", "{own}");

    let gateway = nats.fabric("check").await;
    let joined = gateway
        .convs
        .get("m.secret.echo-bot")
        .await
        .expect("kv get");
    assert!(joined.is_none(), "the bot made itself a member of secret");
    let forged = gateway
        .presence
        .get("dev.mallory.forged-gateway")
        .await
        .expect("kv get");
    assert!(forged.is_none(), "the bot forged a device key");
    assert_eq!(counts(&nats, "KV_CHAT_CONVS").await, convs_before);
    assert_eq!(counts(&nats, "CHAT_MSGS_0").await, messages_before);
    // The conversation's chain goes on unbroken: no forged message slipped in.
    let (second, _) = alice.post("lobby", "a2", "after").await;
    let next = alice.msg().await;
    assert_eq!(
        (next["seq"].as_u64(), next["prev"].as_u64()),
        (Some(second), Some(first))
    );
    alice.no_msg_within(Duration::from_millis(200)).await;
}

/// Connects as `role` with the shipped config's dev password.
async fn role_client(nats: &Nats, role: Role) -> async_nats::Client {
    let password = format!("{}-dev-password", role.user());
    async_nats::ConnectOptions::with_user_and_password(role.user().into(), password)
        .custom_inbox_prefix(role.inbox_prefix())
        .connect(nats.url_as(""))
        .await
        .expect("role connects")
}

#[tokio::test]
async fn no_role_may_purge_delete_or_reconfigure_what_the_fabric_keeps() {
    let nats = Nats::start().await;
    seed(&nats, "lobby", &["alice"]).await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    alice.post("lobby", "a1", "keep me").await;
    let before = counts(&nats, "CHAT_MSGS_0").await;
    // An update that keeps one message is a purge by another name.
    let shrink = |stream: &str| {
        let mut config = chatfabric_nats::provision::StreamSettings::default().stream_config(0);
        config.name = stream.into();
        config.max_messages = 1;
        Bytes::from(serde_json::to_vec(&config).expect("config json"))
    };
    let destructive = [
        ("$JS.API.STREAM.PURGE.CHAT_MSGS_0", Bytes::new()),
        ("$JS.API.STREAM.DELETE.CHAT_MSGS_0", Bytes::new()),
        (
            "$JS.API.STREAM.MSG.DELETE.CHAT_MSGS_0",
            Bytes::from_static(br#"{"seq":1}"#),
        ),
        ("$JS.API.STREAM.UPDATE.CHAT_MSGS_0", shrink("CHAT_MSGS_0")),
        ("$JS.API.STREAM.PURGE.KV_CHAT_CONVS", Bytes::new()),
        ("$JS.API.STREAM.DELETE.KV_CHAT_CONVS", Bytes::new()),
        (
            "$JS.API.STREAM.UPDATE.KV_CHAT_CONVS",
            shrink("KV_CHAT_CONVS"),
        ),
    ];
    let mut refusals = Vec::new();
    for role in Role::ALL {
        let client = role_client(&nats, role).await;
        for (subject, body) in destructive.clone() {
            let client = client.clone();
            refusals.push(async move {
                let answer =
                    tokio::time::timeout(Duration::from_secs(1), client.request(subject, body))
                        .await;
                assert!(
                    !matches!(answer, Ok(Ok(_))),
                    "{role:?} may call {subject}: {answer:?}"
                );
            });
        }
    }
    futures::future::join_all(refusals).await;
    assert_eq!(counts(&nats, "CHAT_MSGS_0").await, before);
    assert_eq!(before.messages, 1);
    // The streams refuse a purge whoever asks, the operators' user included ...
    let admin = admin(&nats).await;
    let purge = admin
        .request("$JS.API.STREAM.PURGE.CHAT_MSGS_0", Bytes::new())
        .await
        .expect("the stream answers");
    let purge: Value = serde_json::from_slice(&purge.payload).expect("json");
    assert!(purge["error"].is_object(), "{purge}");
    assert_eq!(counts(&nats, "CHAT_MSGS_0").await.messages, 1);
    // ... and the update refused to every role works for a user allowed it, so those refusals
    // were the server's permissions.
    let (subject, body) = destructive[3].clone();
    let updated = admin.request(subject, body).await.expect("admin updates");
    let updated: Value = serde_json::from_slice(&updated.payload).expect("json");
    assert_eq!(updated["config"]["max_msgs"], 1, "{updated}");
}

#[tokio::test]
async fn a_role_that_writes_keys_cannot_roll_a_bucket_up() {
    let nats = Nats::start().await;
    seed(&nats, "lobby", &["alice", "bob"]).await;
    let before = counts(&nats, "KV_CHAT_CONVS").await.messages;
    assert_eq!(before, 3, "the conversation and its two members");
    // The gateway writes memberships and presence writes presence keys: a rollup publish to one
    // key would delete every other key of the bucket.
    for (role, subject) in [
        (Role::Gateway, "$KV.CHAT_CONVS.m.lobby.mallory"),
        (Role::Presence, "$KV.CHAT_PRESENCE.user.mallory"),
    ] {
        let js = async_nats::jetstream::new(role_client(&nats, role).await);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Rollup", "all");
        let ack = match js
            .publish_with_headers(subject, headers, Bytes::from_static(b"{}"))
            .await
        {
            Ok(ack) => ack.await.map(|a| a.sequence),
            Err(e) => panic!("{role:?} could not publish at all: {e}"),
        };
        assert!(ack.is_err(), "{role:?} rolled up {subject}: {ack:?}");
    }
    assert_eq!(counts(&nats, "KV_CHAT_CONVS").await.messages, before);
}
