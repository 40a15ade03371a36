//! NATS trouble the fabric must ride out: a stalled presence watch, device keys deleted behind a
//! gateway's back or left behind (a lost or failed delete), a start-up while JetStream has no
//! quorum, a paused stream leader.

use std::time::{Duration, Instant};

use crate::presence::{presence_of, query, Presence};
use crate::support::fabric::cluster_fabric;
use crate::support::{spawn_chatfabric, Client, Nats, Spawned, TestGateway};
use chatfabric_nats::permissions::{url_with_credentials, Role};
use futures::StreamExt;
use serde_json::json;

/// An operator's JetStream context (user `admin`), for inspecting and breaking things.
async fn admin(url: &str) -> async_nats::jetstream::Context {
    let client = async_nats::ConnectOptions::with_user_and_password(
        "admin".into(),
        "admin-dev-password".into(),
    )
    .connect(url)
    .await
    .expect("admin connects");
    async_nats::jetstream::new(client)
}

/// Bob (on `g`) in a group with alice, who is connected to `g` too and seen online by bob.
async fn alice_online_for_bob(g: &TestGateway) -> (Client, Client) {
    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    let conv = bob.create_group(&["alice"]).await;
    bob.subscribe(&conv, None).await;
    let alice = Client::connect(&g.ws_url(), "alice").await;
    let on = bob.event_where(presence_of("alice")).await;
    assert_eq!(on["online"], true, "{on}");
    (alice, bob)
}

/// Asserts that bob hears no offline event of alice for `d`.
async fn alice_stays_online(bob: &mut Client, d: Duration) {
    if let Some(e) = bob.event_within(d, presence_of("alice")).await {
        assert_eq!(e["online"], true, "alice is connected, yet: {e}");
    }
}

#[tokio::test]
async fn a_stalled_presence_watch_does_not_bury_live_gateways() {
    let nats = Nats::start().await;
    // Gateways are dead after 6 s of silence; the client library notices a silent watch only
    // after 10 s, so without its own check the service buries everyone first.
    let _presence = Presence::start(&nats, Duration::from_secs(6), Duration::from_secs(1)).await;
    let g = TestGateway::start(&nats).await;
    let (_alice, mut bob) = alice_online_for_bob(&g).await;

    // Stall the service's watch as a NATS node death does: its consumer vanishes, no error.
    let js = admin(&nats.url_as("")).await;
    let stream = js.get_stream("KV_CHAT_PRESENCE").await.expect("bucket");
    let mut consumers = stream.consumers();
    let mut stalled = 0;
    while let Some(info) = consumers.next().await {
        let info = info.expect("consumer info");
        if info.config.filter_subject == "$KV.CHAT_PRESENCE.>" {
            stream.delete_consumer(&info.name).await.expect("delete");
            stalled += 1;
        }
    }
    assert_eq!(stalled, 1, "the presence service's watch");

    alice_stays_online(&mut bob, Duration::from_secs(12)).await;
    assert_eq!(query(&mut bob, "alice").await["online"], true);
}

#[tokio::test]
async fn a_gateway_restores_device_keys_deleted_behind_its_back() {
    let nats = Nats::start().await;
    let _presence = Presence::quick(&nats).await; // 700 ms grace
    let g = TestGateway::start(&nats).await;
    let (_alice, mut bob) = alice_online_for_bob(&g).await;

    // What a presence service with a stale view does: delete alice's device key.
    let presence = nats.fabric_as(Role::Presence, "test-breaker", 64).await.0;
    let mut keys = presence.presence.keys().await.expect("keys");
    let mut key = None;
    while let Some(k) = keys.next().await {
        let k = k.expect("key");
        if k.starts_with("dev.alice.") {
            key = Some(k);
        }
    }
    let key = key.expect("alice's device key");
    presence.presence.delete(&key).await.expect("delete");
    let deleted = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entry = presence.presence.get(&key).await.expect("get");
        if entry.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never restored {key}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "device key restored {:?} after its deletion",
        deleted.elapsed()
    );
    alice_stays_online(&mut bob, Duration::from_secs(2)).await;
    assert_eq!(query(&mut bob, "alice").await["online"], true);
}

/// `user`'s device key on any gateway, read through `kv`: waits up to `limit` until its presence
/// is `present`; returns the key.
async fn await_device_key(
    kv: &async_nats::jetstream::kv::Store,
    user: &str,
    present: bool,
    limit: Duration,
) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let mut found = None;
        // A listing that has not ended in 2 s (seen to wait forever when only deletions were
        // left) is tried again.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut keys = kv.keys().await.ok()?;
            while let Some(Ok(k)) = keys.next().await {
                if k.starts_with(&format!("dev.{user}.")) {
                    found = Some(k);
                }
            }
            Some(())
        })
        .await;
        if found.is_some() == present {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{user}'s device key: wanted present={present}, found {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_gateway_deletes_device_keys_left_behind_for_users_gone() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let presence = nats.fabric_as(Role::Presence, "test-breaker", 64).await.0;
    let kv = &presence.presence;
    let alice = Client::connect(&g.ws_url(), "alice").await;
    let key = await_device_key(kv, "alice", true, Duration::from_secs(5))
        .await
        .expect("alice's key");
    drop(alice);
    await_device_key(kv, "alice", false, Duration::from_secs(5)).await;

    // What a replica that lost the delete brings back: the key, with alice gone.
    kv.put(&key, "{\"since\":1}".into()).await.expect("put");
    let stale = Instant::now();
    await_device_key(kv, "alice", false, Duration::from_secs(5)).await;
    println!(
        "stale device key deleted {:?} after it appeared",
        stale.elapsed()
    );
}

#[tokio::test]
async fn a_device_key_delete_that_fails_is_retried_until_it_holds() {
    let mut nodes = crate::support::fabric::start_cluster().await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let parts = cluster_fabric(&urls, 0).await;
    let g_node = parts.node(&nodes);
    let g = TestGateway::start_on(&parts).await;
    let inspect = admin(&urls[g_node]).await;
    let kv = inspect
        .get_key_value("CHAT_PRESENCE")
        .await
        .expect("bucket");
    let alice = Client::connect(&g.ws_url(), "alice").await;
    await_device_key(&kv, "alice", true, Duration::from_secs(10)).await;

    // JetStream loses its quorum: alice leaves, and the gateway's delete cannot be stored.
    let others: Vec<usize> = (0..nodes.len()).filter(|i| *i != g_node).collect();
    for i in &others {
        nodes[*i].kill();
    }
    let errors = g
        .metric("chatfabric_gateway_presence_write_errors_total")
        .await;
    drop(alice);
    let deadline = Instant::now() + Duration::from_secs(30);
    while g
        .metric("chatfabric_gateway_presence_write_errors_total")
        .await
        <= errors
    {
        assert!(Instant::now() < deadline, "the delete never failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The quorum is back: the gateway deletes the key without anyone's help.
    for i in &others {
        nodes[*i].restart().expect("restart");
    }
    await_device_key(&kv, "alice", false, Duration::from_secs(30)).await;
}

/// `GET path` on `port`: the status code, or 0 when nothing answers.
pub(crate) async fn http_status(port: u16, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn spawn_role(role: &str, url: &str, extra: &[&str]) -> Spawned {
    let mut args = vec![role, "--nats-url", url, "--replicas", "3"];
    args.extend_from_slice(extra);
    spawn_chatfabric(args)
}

#[tokio::test]
async fn roles_wait_for_jetstream_instead_of_exiting() {
    let mut nodes = crate::support::fabric::start_cluster().await;
    // One node of three: NATS answers, JetStream has no quorum and times out every request.
    nodes[1].kill();
    nodes[2].kill();
    let url = |role: Role| {
        url_with_credentials(
            &nodes[0].url(),
            role.user(),
            &format!("{}-dev-password", role.user()),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let db = db.to_str().unwrap();
    let port = crate::presence::free_port();
    let listen = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{}", crate::presence::free_port());
    let jwt = ["--jwt-secret", "test-secret", "--sqlite-path", db];
    let mut gateway = spawn_role(
        "gateway",
        &url(Role::Gateway),
        &[&["--listen", &listen][..], &jwt].concat(),
    );
    let mut persister = spawn_role(
        "persister",
        &url(Role::Persister),
        &["--sqlite-path", db, "--metrics-listen", &metrics],
    );
    let metrics_port: u16 = metrics.rsplit(':').next().unwrap().parse().unwrap();
    let presence_port = crate::presence::free_port();
    let presence_metrics = format!("127.0.0.1:{presence_port}");
    let mut presence = spawn_role(
        "presence",
        &url(Role::Presence),
        &["--metrics-listen", &presence_metrics],
    );

    // Longer than a JetStream request's timeout (5 s): the roles used to exit by then. Each
    // says it is not ready meanwhile (the persister and presence from their first answer on).
    let mut not_ready = 0;
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        assert!(gateway.exited().is_none(), "the gateway exited");
        assert!(persister.exited().is_none(), "the persister exited");
        assert!(presence.exited().is_none(), "the presence service exited");
        match http_status(port, "/readyz").await {
            503 => not_ready += 1,
            0 => {}
            other => panic!("/readyz answered {other} without JetStream"),
        }
        for (role, p) in [("persister", metrics_port), ("presence", presence_port)] {
            match http_status(p, "/readyz").await {
                503 | 0 => {}
                other => panic!("the {role}'s /readyz answered {other} without JetStream"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(not_ready > 0, "/readyz never answered 503 while starting");
    assert_eq!(http_status(port, "/healthz").await, 200);
    for p in [metrics_port, presence_port] {
        assert_eq!(http_status(p, "/readyz").await, 503, "port {p}");
        assert_eq!(http_status(p, "/healthz").await, 200, "port {p}");
    }

    let nodes = tokio::task::spawn_blocking(move || {
        nodes[1].restart().expect("n1 restarts");
        nodes[2].restart().expect("n2 restarts");
        nodes
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while http_status(port, "/readyz").await != 200 {
        assert!(gateway.exited().is_none(), "the gateway exited");
        assert!(Instant::now() < deadline, "the gateway never became ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (role, p) in [("persister", metrics_port), ("presence", presence_port)] {
        while http_status(p, "/readyz").await != 200 {
            assert!(Instant::now() < deadline, "the {role} never became ready");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let mut alice = Client::connect(&format!("ws://{listen}/ws"), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let (seq, _) = alice.post(&conv, "k1", "hello").await;
    assert!(seq > 0);
    assert!(persister.exited().is_none(), "the persister exited");
    assert!(presence.exited().is_none(), "the presence service exited");
    for n in &nodes {
        assert!(n.role_violations().is_empty(), "{:?}", n.role_violations());
    }
}

/// The index of the node leading `stream` (nodes are named `n<i>`).
pub(crate) async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await {
            if let Ok(info) = s.info().await {
                if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                    return leader.trim_start_matches('n').parse().expect("node name");
                }
            }
        }
        assert!(Instant::now() < deadline, "{stream} has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_paused_stream_leader_delays_sends_briefly_and_loses_none() {
    let nodes = crate::support::fabric::start_cluster().await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let bob_parts = cluster_fabric(&urls, 0).await; // provisions the R3 streams
    let js = admin(&urls[0]).await;
    let leader = stream_leader(&js, "CHAT_MSGS_0").await;
    // Alice's gateway knows only the leader's address (it learns the others from it).
    let alice_parts = cluster_fabric(&urls[leader..=leader], 0).await;
    let other = (leader + 1) % 3;
    let bob_parts = if bob_parts.port() == nodes[leader].port() {
        cluster_fabric(&urls[other..=other], 0).await
    } else {
        bob_parts
    };
    let g1 = TestGateway::start_on(&alice_parts).await;
    let g2 = TestGateway::start_on(&bob_parts).await;
    let mut alice = Client::connect(&g1.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    let mut bob = Client::connect(&g2.ws_url(), "bob").await;
    bob.subscribe(&conv, None).await;

    let pause = Duration::from_secs(20);
    let mut paused_at = None;
    let mut acked = Vec::new();
    let mut last_ack = Instant::now();
    let mut longest = Duration::ZERO;
    let mut unavailable = 0;
    for i in 0..40 {
        if i == 5 {
            nodes[leader].pause();
            paused_at = Some(Instant::now());
        }
        if paused_at.is_some_and(|at| at.elapsed() >= pause) {
            nodes[leader].resume();
        }
        // Retry with the same client id until acknowledged, as a client does.
        let id = format!("k{i}");
        let seq = loop {
            alice
                .send(json!({"op":"send","conv":conv,"client_id":id,"body":format!("m{i}")}))
                .await;
            let r = tokio::time::timeout(Duration::from_secs(30), alice.reply())
                .await
                .expect("a reply to every send");
            match r["op"].as_str() {
                Some("ack") => break r["seq"].as_u64().unwrap(),
                _ => {
                    assert_eq!(r["code"], "unavailable", "{r}");
                    unavailable += 1;
                }
            }
        };
        longest = longest.max(last_ack.elapsed());
        last_ack = Instant::now();
        acked.push(seq);
    }
    nodes[leader].resume();
    println!(
        "stream leader paused {pause:?}: longest wait for an ack {longest:?}, {unavailable} unavailable"
    );
    assert!(
        longest < Duration::from_secs(15),
        "sends stalled {longest:?} while the stream leader was paused"
    );
    assert!(g1.metric("chatfabric_gateway_publish_retries").await >= 1.0);
    let got = bob.msgs(40).await; // checks the prev chain: no gap, no reorder
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), acked);
    for n in &nodes {
        assert!(n.role_violations().is_empty(), "{:?}", n.role_violations());
    }
}

#[tokio::test]
async fn an_idle_connection_gets_its_pings_answered() {
    // Clients (the load generator, the SDK) tell a paused gateway from a quiet one by pinging.
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let mut req = g.ws_url().into_client_request().unwrap();
    let bearer = format!("Bearer {}", crate::support::fabric::token("alice"));
    req.headers_mut()
        .insert("authorization", bearer.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    for _ in 0..3 {
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Pong(p))) => return p,
                    Some(Ok(_)) => {}
                    other => panic!("connection ended: {other:?}"),
                }
            }
        })
        .await
        .expect("a pong on an idle connection");
        assert_eq!(&pong[..], b"are you there");
    }
}
