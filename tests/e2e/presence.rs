//! Presence, typing and read receipts across two gateways, a presence service, and a gateway
//! process killed with SIGKILL.

use crate::support::Spawned;
use chatfabric_nats::permissions::Role;
use std::time::{Duration, Instant};

use crate::support::{Client, Nats, TestGateway};
use chatfabric_presence::PresenceConfig;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// A presence service in this process, stopped on drop.
pub(crate) struct Presence(CancellationToken);

impl Presence {
    pub(crate) async fn start(
        nats: &Nats,
        gateway_timeout: Duration,
        offline_grace: Duration,
    ) -> Self {
        let stop = CancellationToken::new();
        let config = PresenceConfig {
            gateway_timeout,
            offline_grace,
            tick: Duration::from_millis(100),
            ..PresenceConfig::default()
        };
        let fabric = nats.fabric_as(Role::Presence, "test", 8192).await.0;
        tokio::spawn(chatfabric_presence::run(fabric, config, stop.clone()));
        Self(stop)
    }

    /// Short timings for tests that do not kill gateways.
    pub(crate) async fn quick(nats: &Nats) -> Self {
        Self::start(nats, Duration::from_secs(3), Duration::from_millis(700)).await
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

pub(crate) fn presence_of(user: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["op"] == "presence" && v["user"] == user && v.get("conv").is_some()
}

pub(crate) async fn query(client: &mut Client, user: &str) -> Value {
    client
        .send(json!({"op":"presence","user":user,"ref":"q"}))
        .await;
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Errors land among replies, answers among events.
            if let Some(e) = client
                .event_within(Duration::from_millis(50), |v| v["ref"] == "q")
                .await
            {
                return e;
            }
            if let Some(r) = client.try_reply() {
                return r;
            }
        }
    })
    .await
    .expect("a presence answer");
    reply
}

#[tokio::test]
async fn online_while_any_device_is_connected_on_any_gateway() {
    let nats = Nats::start().await;
    let _presence = Presence::quick(&nats).await;
    let (g1, g2) = TestGateway::pair(&nats).await;
    let mut bob = Client::connect(&g2.ws_url(), "bob").await;
    let conv = bob.create_group(&["alice"]).await;
    bob.subscribe(&conv, None).await;

    let phone = Client::connect(&g1.ws_url(), "alice").await;
    let on = bob.event_where(presence_of("alice")).await;
    assert_eq!(
        (on["online"].clone(), on["conv"].as_str()),
        (json!(true), Some(conv.as_str())),
        "{on}"
    );
    let laptop = Client::connect(&g2.ws_url(), "alice").await;
    let q = query(&mut bob, "alice").await;
    assert_eq!(q["online"], true, "{q}");

    phone.close().await;
    assert!(
        bob.event_within(Duration::from_secs(2), presence_of("alice"))
            .await
            .is_none(),
        "the laptop is still connected: no event"
    );
    let t = Instant::now();
    laptop.close().await;
    let off = bob.event_where(presence_of("alice")).await;
    assert_eq!(off["online"], false, "{off}");
    println!("last device closed -> offline event: {:?}", t.elapsed());
    let q = query(&mut bob, "alice").await;
    assert_eq!(q["online"], false, "{q}");
    assert!(q["last_seen"].as_u64().is_some(), "{q}");
}

#[tokio::test]
async fn a_quick_reconnect_does_not_flap() {
    let nats = Nats::start().await;
    let _presence = Presence::start(&nats, Duration::from_secs(3), Duration::from_secs(2)).await;
    let (g1, g2) = TestGateway::pair(&nats).await;
    let mut bob = Client::connect(&g1.ws_url(), "bob").await;
    let conv = bob.create_group(&["alice"]).await;
    bob.subscribe(&conv, None).await;
    let alice = Client::connect(&g1.ws_url(), "alice").await;
    assert_eq!(bob.event_where(presence_of("alice")).await["online"], true);

    alice.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _alice = Client::connect(&g2.ws_url(), "alice").await; // another gateway, within the grace
    assert!(
        bob.event_within(Duration::from_secs(4), presence_of("alice"))
            .await
            .is_none(),
        "no offline/online flap"
    );
}

#[tokio::test]
async fn nobody_learns_the_presence_of_a_stranger() {
    let nats = Nats::start().await;
    let _presence = Presence::quick(&nats).await;
    let g = TestGateway::start(&nats).await;
    let mut carol = Client::connect(&g.ws_url(), "carol").await;
    let own = carol.create_group(&["dave"]).await;
    carol.subscribe(&own, None).await;
    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    let shared = bob.create_group(&["alice"]).await;
    bob.subscribe(&shared, None).await;
    // carol cannot subscribe to a conversation she is not in, so she gets none of its events.
    carol.send(json!({"op":"subscribe","conv":shared})).await;
    assert_eq!(carol.reply().await["code"], "forbidden");

    let _alice = Client::connect(&g.ws_url(), "alice").await;
    assert_eq!(bob.event_where(presence_of("alice")).await["online"], true);
    assert_eq!(query(&mut carol, "alice").await["code"], "forbidden");
    assert_eq!(
        query(&mut carol, "nobody-at-all").await["code"],
        "forbidden"
    );
    assert!(
        carol
            .event_within(Duration::from_secs(1), presence_of("alice"))
            .await
            .is_none(),
        "carol shares no conversation with alice"
    );
    assert_eq!(query(&mut bob, "alice").await["online"], true);
}

#[tokio::test]
async fn typing_reaches_members_once_and_expires_by_itself() {
    let nats = Nats::start().await;
    let mut config = nats.config();
    config.presence.typing_ttl = Duration::from_millis(1500);
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    bob.subscribe(&conv, None).await;
    let _ = bob.event_where(|v| v["op"] == "unread").await;

    alice
        .send(json!({"op":"typing","conv":conv,"state":"start"}))
        .await;
    let t = bob.event_where(|v| v["op"] == "typing").await;
    assert_eq!(
        t,
        json!({"op":"typing","conv":conv,"user":"alice","state":"start","expires_in":1500})
    );
    // No stop is ever sent: the receiver expires the start itself; nothing else arrives.
    assert!(
        bob.event_within(Duration::from_secs(3), |_| true)
            .await
            .is_none(),
        "typing is ephemeral: no follow-up frame"
    );

    let mut mallory = Client::connect(&g.ws_url(), "mallory").await;
    mallory
        .send(json!({"op":"typing","conv":conv,"state":"start","ref":"t"}))
        .await;
    assert_eq!(mallory.reply().await["code"], "forbidden");

    // Per connection: 5 in a burst, then about one per second.
    for _ in 0..5 {
        alice
            .send(json!({"op":"typing","conv":conv,"state":"start"}))
            .await;
    }
    alice
        .send(json!({"op":"typing","conv":conv,"state":"stop","ref":"x"}))
        .await;
    let r = alice.reply().await;
    assert_eq!(
        (r["code"].as_str(), r["ref"].as_str()),
        (Some("rate_limited"), Some("x")),
        "{r}"
    );
}

#[tokio::test]
async fn read_receipts_are_shared_by_devices_and_survive_a_restart() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    alice.subscribe(&conv, None).await;
    let seqs = alice.post_numbered(&conv, 0..3).await;

    let mut phone = Client::connect(&g.ws_url(), "bob").await;
    let unread = phone.event_where(|v| v["op"] == "unread").await;
    assert_eq!(unread["counts"][&conv], 3, "{unread}");
    let mut laptop = Client::connect(&g.ws_url(), "bob").await;
    laptop.subscribe(&conv, None).await;

    phone
        .send(json!({"op":"read","conv":conv,"seq":seqs[1],"ref":"r"}))
        .await;
    let r = phone.event_where(|v| v["ref"] == "r").await;
    assert_eq!(
        r,
        json!({"op":"read","conv":conv,"user":"bob","seq":seqs[1],"ref":"r"})
    );
    let event = json!({"op":"read","conv":conv,"user":"bob","seq":seqs[1]});
    assert_eq!(
        laptop.event_where(|v| v["op"] == "read").await,
        event,
        "the other device"
    );
    assert_eq!(
        alice.event_where(|v| v["op"] == "read").await,
        event,
        "the other member"
    );

    // Cursors only move forward; past the head is invalid.
    phone
        .send(json!({"op":"read","conv":conv,"seq":seqs[0],"ref":"back"}))
        .await;
    assert_eq!(
        phone.event_where(|v| v["ref"] == "back").await["seq"],
        seqs[1]
    );
    phone
        .send(json!({"op":"read","conv":conv,"seq":seqs[2] + 100,"ref":"ahead"}))
        .await;
    assert_eq!(phone.reply().await["code"], "invalid");

    // A new gateway (a restart) reads the same cursor.
    g.stop().await;
    let g = TestGateway::start(&nats).await;
    let mut again = Client::connect(&g.ws_url(), "bob").await;
    let unread = again.event_where(|v| v["op"] == "unread").await;
    assert_eq!(unread["counts"][&conv], 1, "{unread}");
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let unread = alice.event_where(|v| v["op"] == "unread").await;
    assert_eq!(
        unread["counts"][&conv], 3,
        "alice never marked anything read: {unread}"
    );
}

pub(crate) fn spawn_gateway(nats: &Nats, port: u16, db: &std::path::Path) -> Spawned {
    let listen = format!("127.0.0.1:{port}");
    let url = nats.url_for(Role::Gateway);
    crate::support::spawn_chatfabric([
        "gateway".as_ref(),
        "--nats-url".as_ref(),
        url.as_ref(),
        "--listen".as_ref(),
        listen.as_ref(),
        "--jwt-secret".as_ref(),
        "test-secret".as_ref(),
        "--sqlite-path".as_ref(),
        db.as_os_str(),
    ])
}

pub(crate) use chatfabric_nats::server::free_port;

#[tokio::test]
async fn a_killed_gateway_takes_its_users_offline_within_the_bound() {
    let nats = Nats::start().await;
    // The defaults: 10 s heartbeat timeout + 3 s grace, checked every 500 ms.
    let defaults = PresenceConfig::default();
    let bound = Duration::from_secs(15);
    let _presence = Presence::start(&nats, defaults.gateway_timeout, defaults.offline_grace).await;
    let g = TestGateway::start(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut doomed = spawn_gateway(&nats, port, &dir.path().join("h.db"));
    let url = format!("ws://127.0.0.1:{port}/ws");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "spawned gateway never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    let conv = bob.create_group(&["alice", "carol"]).await;
    bob.subscribe(&conv, None).await;
    let _alice = Client::connect(&url, "alice").await;
    let _carol_there = Client::connect(&url, "carol").await;
    let _carol_here = Client::connect(&g.ws_url(), "carol").await;
    for _ in 0..2 {
        let on = bob
            .event_where(|v| presence_of("alice")(v) || presence_of("carol")(v))
            .await;
        assert_eq!(on["online"], true, "{on}");
    }

    doomed.kill(); // SIGKILL: no clean-up, no heartbeat delete
    let killed = Instant::now();
    let off = bob
        .event_within(bound + Duration::from_secs(5), presence_of("alice"))
        .await
        .expect("alice's offline event");
    let took = killed.elapsed();
    println!("gateway killed -> alice offline event after {took:?} (bound {bound:?})");
    assert_eq!(off["online"], false, "{off}");
    assert!(
        took <= bound,
        "offline after {took:?}, over the {bound:?} bound"
    );
    assert!(
        bob.event_within(Duration::from_secs(1), presence_of("carol"))
            .await
            .is_none(),
        "carol is still connected through the other gateway"
    );
    assert_eq!(query(&mut bob, "carol").await["online"], true);
}
