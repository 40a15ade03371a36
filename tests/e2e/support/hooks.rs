//! The webhook role for the tests: in this process ([`Hooks`]) or as its own process
//! ([`spawn_hooks`]), the room they notify about, and what to read back.

use std::collections::BTreeSet;
use std::time::Duration;

use chatfabric_nats::permissions::Role;
use chatfabric_webhooks::{WebhookConfig, WebhooksArgs};
use clap::Parser;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::receiver::{Received, Receiver};
use super::{spawn_chatfabric, Client, Nats, Spawned, TestGateway};
use crate::bots::seed;
use crate::faults::http_status;

pub const SECRET: &str = "test-webhook-secret";
pub const WAIT: Duration = Duration::from_secs(20);

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: WebhooksArgs,
}

/// The webhook role in this process, as its own NATS user, stopped on drop.
pub struct Hooks(CancellationToken);

impl Hooks {
    /// Starts it for `urls` (quick retries; `tune` adjusts the rest) and waits until it is ready.
    pub async fn start(
        nats: &Nats,
        urls: &[String],
        tune: impl FnOnce(&mut WebhookConfig),
    ) -> Self {
        let urls = urls.join(",");
        let flags = Flags::parse_from(["t", "--webhook-url", &urls, "--webhook-secret", SECRET]);
        let mut config = flags.args.config().expect("webhook config");
        config.delivery.retry_min = Duration::from_millis(50);
        config.delivery.retry_max = Duration::from_millis(200);
        tune(&mut config);
        let fabric = nats.fabric_as(Role::Webhooks, "test", 8192).await.0;
        let stop = CancellationToken::new();
        let (ready, mut ready_rx) = tokio::sync::watch::channel(false);
        tokio::spawn({
            let stop = stop.clone();
            async move {
                chatfabric_webhooks::run(fabric, config, &ready, stop)
                    .await
                    .expect("webhooks run")
            }
        });
        tokio::time::timeout(WAIT, ready_rx.wait_for(|r| *r))
            .await
            .expect("webhooks ready in time")
            .expect("webhooks running");
        Self(stop)
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Waits until the presence service published `user` online.
pub async fn online(nats: &Nats, user: &str) {
    let fabric = nats.fabric("probe").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let entry = fabric
            .presence
            .get(format!("user.{user}"))
            .await
            .ok()
            .flatten();
        if entry
            .is_some_and(|v| serde_json::from_slice::<Value>(&v).is_ok_and(|e| e["online"] == true))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} never online"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A room with alice (online, the sender), carol (online) and bob (offline, never connected).
pub async fn room(nats: &Nats, g: &TestGateway) -> (Client, Client) {
    seed(nats, "room", &["alice", "bob", "carol"]).await;
    let alice = Client::connect(&g.ws_url(), "alice").await;
    let carol = Client::connect(&g.ws_url(), "carol").await;
    online(nats, "alice").await;
    online(nats, "carol").await;
    (alice, carol)
}

pub fn for_user<'a>(events: &'a [Received], user: &str) -> Vec<&'a Received> {
    events
        .iter()
        .filter(|r| r.json["user"] == user && r.json["type"] == "message.offline")
        .collect()
}

/// The message sequences `message.offline` events for `user` cover.
pub fn covered(events: &[Received], user: &str) -> BTreeSet<u64> {
    for_user(events, user)
        .iter()
        .flat_map(|r| r.json["first_seq"].as_u64().unwrap()..=r.json["last_seq"].as_u64().unwrap())
        .collect()
}

/// An operator's JetStream context, for reading the dead letters and the consumer.
pub async fn admin(nats: &Nats) -> async_nats::jetstream::Context {
    let client = async_nats::ConnectOptions::with_user_and_password(
        "admin".into(),
        "admin-dev-password".into(),
    )
    .connect(nats.url_as(""))
    .await
    .expect("admin connects");
    async_nats::jetstream::new(client)
}

/// The webhook role's consumer on the message stream, as the server sees it.
pub async fn consumer_info(
    js: &async_nats::jetstream::Context,
) -> async_nats::jetstream::consumer::Info {
    js.get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
        "webhooks",
        "CHAT_MSGS_0",
    )
    .await
    .expect("the webhook consumer")
    .cached_info()
    .clone()
}

pub use chatfabric_nats::server::free_port;

/// `chatfabric_webhooks_held_messages` of the role listening on `port`.
pub async fn held(port: u16) -> f64 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let text = crate::support::fabric::http_get(addr, "/metrics").await;
    crate::support::stack::metric(&text, "chatfabric_webhooks_held_messages").unwrap_or(0.0)
}

/// `chatfabric webhooks` as its own process, ready, and the port of its health endpoints.
pub async fn spawn_hooks(nats: &Nats, receiver: &Receiver) -> (Spawned, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = nats.url_for(Role::Webhooks);
    let receiver_url = receiver.url();
    let process = spawn_chatfabric([
        "webhooks",
        "--nats-url",
        &url,
        "--webhook-url",
        &receiver_url,
        "--webhook-secret",
        SECRET,
        "--coalesce",
        "3s",
        "--webhook-ack-wait",
        "2s",
        "--retry-min",
        "50ms",
        "--webhooks-listen",
        &listen,
    ]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_status(port, "/readyz").await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook role never got ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_status(port, "/healthz").await, 200);
    (process, port)
}
