//! The server API (docs/SERVER_API.md): keys and scopes, conversations managed by the
//! application, messages it posts (marked), users it disconnects on every gateway, and the
//! gateway option that leaves membership to it.

use std::time::Duration;

use chatfabric_gateway::membership::{ClientMembership, ConversationLimits};
use chatfabric_gateway::GatewayConfig;
use chatfabric_nats::{ConvId, UserId};
use serde_json::{json, Value};

use crate::support::fabric::cluster_fabric;
use crate::support::server_api::{
    self, api, call, token_issued, ws_refused, FULL_KEY, MANAGER_KEY, MESSAGES_KEY,
};
use crate::support::sse::SseClient;
use crate::support::{Client, Nats, TestGateway};

async fn gateway(nats: &Nats) -> TestGateway {
    TestGateway::start_with(nats, server_api::config(nats), 8192).await
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or_default()
}

fn group(id: &str, members: &[&str]) -> Value {
    json!({"id": id, "kind": "group", "title": "Support", "members": members})
}

/// Waits (at most 10 s) until `check` holds.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    eventually_within(Duration::from_secs(10), what, check).await
}

/// Waits (at most `limit`) until `check` holds.
async fn eventually_within<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    check: impl Fn() -> F,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requests_without_a_valid_key_scope_or_input_are_refused() {
    let nats = Nats::start().await;
    let g = gateway(&nats).await;
    let create = group("g1", &["alice"]);
    let path = "/v1/server/conversations";
    for key in [None, Some("cfk_unknown"), Some("")] {
        let (status, body) = call(g.addr, key, "POST", path, Some(&create)).await;
        assert_eq!(
            (status, code(&body)),
            (401, "unauthenticated"),
            "{key:?}: {body}"
        );
    }
    // The messages key may post but not manage conversations or users.
    for (method, path) in [
        ("POST", path),
        ("GET", "/v1/server/conversations/g1"),
        ("GET", "/v1/server/users/alice/conversations"),
        ("POST", "/v1/server/users/alice/disconnect"),
        ("GET", "/v1/server/presence?user=alice"),
    ] {
        let (status, body) = call(g.addr, Some(MESSAGES_KEY), method, path, Some(&create)).await;
        assert_eq!(
            (status, code(&body)),
            (403, "forbidden"),
            "{method} {path}: {body}"
        );
    }
    // ... and the manager key manages but neither posts nor reads messages.
    for (method, path) in [
        ("POST", "/v1/server/conversations/g1/messages"),
        ("GET", "/v1/server/conversations/g1/messages"),
    ] {
        let post = json!({"service": "billing", "body": "hi", "idempotency_key": "k"});
        let (status, body) = call(g.addr, Some(MANAGER_KEY), method, path, Some(&post)).await;
        assert_eq!(
            (status, code(&body)),
            (403, "forbidden"),
            "{method} {path}: {body}"
        );
    }
    let other = group("g2", &["alice"]);
    assert_eq!(api(g.addr, "POST", path, Some(&other)).await.0, 201);
    let members = "/v1/server/conversations/g2/members";
    for bad in [json!({"user": "a b"}), json!({}), json!({"user": "svc_x"})] {
        let (status, body) = api(g.addr, "POST", members, Some(&bad)).await;
        assert_eq!((status, code(&body)), (400, "invalid"), "{bad}: {body}");
    }
    for (path, bad) in [
        ("/v1/server/users/a.b/disconnect", json!({})),
        (
            "/v1/server/users/alice/disconnect",
            json!({"revoke_before": "soon"}),
        ),
        (
            "/v1/server/users/alice/disconnect",
            json!({"revoke": true, "extra": 1}),
        ),
    ] {
        let (status, body) = api(g.addr, "POST", path, Some(&bad)).await;
        assert_eq!(
            (status, code(&body)),
            (400, "invalid"),
            "{path} {bad}: {body}"
        );
    }
    for bad in [
        json!({"id": "a.b", "kind": "group", "members": []}),
        json!({"id": "g1", "kind": "room", "members": []}),
        json!({"id": "g1", "kind": "group", "members": ["a b"]}),
        json!({"id": "g1", "kind": "group", "members": [], "extra": 1}),
        json!({"id": "g1", "kind": "group", "members": ["svc_billing"]}),
        json!({"id": "g1", "kind": "direct", "members": ["alice", "bob"]}),
        json!("not an object"),
    ] {
        let (status, body) = api(g.addr, "POST", path, Some(&bad)).await;
        assert_eq!((status, code(&body)), (400, "invalid"), "{bad}: {body}");
    }
    let (status, body) = api(g.addr, "GET", "/v1/server/conversations/nope", None).await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    let (status, body) = api(g.addr, "GET", "/v1/server/nothing", None).await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    let (status, body) = api(g.addr, "GET", "/v1/server/presence", None).await;
    assert_eq!((status, code(&body)), (400, "invalid"), "{body}");
    let post = "/v1/server/conversations/nope/messages";
    for bad in [
        json!({"body": "hi", "idempotency_key": "k"}),
        json!({"service": "a", "user": "alice", "body": "hi", "idempotency_key": "k"}),
        json!({"service": "bad name", "body": "hi", "idempotency_key": "k"}),
        json!({"service": "billing", "body": "hi"}),
    ] {
        let (status, body) = call(g.addr, Some(MESSAGES_KEY), "POST", post, Some(&bad)).await;
        assert_eq!((status, code(&body)), (400, "invalid"), "{bad}: {body}");
    }
}

#[tokio::test]
async fn conversations_are_created_idempotently_and_managed_by_the_application() {
    let nats = Nats::start().await;
    let mut config = server_api::config(&nats);
    config.limits.conversations = ConversationLimits {
        per_user: 10,
        added_by_others: 3,
    };
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let path = "/v1/server/conversations";
    let (status, created) = api(g.addr, "POST", path, Some(&group("g1", &["bob", "alice"]))).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created"], true);
    assert_eq!(created["members"], json!(["alice", "bob"]));
    assert_eq!(created["created_by"], "svc_backend");
    // The same request again (a retry) succeeds; a different one for the id conflicts.
    let (status, again) = api(g.addr, "POST", path, Some(&group("g1", &["alice", "bob"]))).await;
    assert_eq!((status, &again["created"]), (200, &json!(false)), "{again}");
    let mut other = group("g1", &["alice", "bob"]);
    other["title"] = json!("Sales");
    let (status, body) = api(g.addr, "POST", path, Some(&other)).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    let (status, body) = api(g.addr, "POST", path, Some(&group("g1", &["alice"]))).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");

    // A direct conversation has the id clients' `create` finds.
    let direct = ConvId::direct(&UserId::new("alice").unwrap(), &UserId::new("bob").unwrap());
    let body = json!({"id": direct, "kind": "direct", "members": ["alice", "bob"]});
    assert_eq!(api(g.addr, "POST", path, Some(&body)).await.0, 201);
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    alice
        .send(json!({"op":"create","kind":"direct","with":"bob"}))
        .await;
    let r = alice.reply().await;
    assert_eq!(r["conversation"]["conv"], direct.as_str(), "{r}");

    // Members: added and removed by the application, seen by the members.
    let members = "/v1/server/conversations/g1/members";
    // Each twice, as a retrying caller would: the second changes nothing and succeeds.
    for _ in 0..2 {
        let (status, body) = api(g.addr, "POST", members, Some(&json!({"user": "carol"}))).await;
        assert_eq!(
            (status, &body["members"]),
            (200, &json!(["alice", "bob", "carol"]))
        );
    }
    for _ in 0..2 {
        let (status, body) = api(g.addr, "DELETE", &format!("{members}/bob"), None).await;
        assert_eq!(
            (status, &body["members"]),
            (200, &json!(["alice", "carol"]))
        );
    }
    alice.subscribe("g1", None).await;
    let (status, body) = api(g.addr, "GET", "/v1/server/conversations/g1", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["kind"], &body["title"]),
        (&json!("group"), &json!("Support"))
    );
    assert_eq!(body["members"], json!(["alice", "carol"]));
    let (status, body) = api(
        g.addr,
        "DELETE",
        &format!("/v1/server/conversations/{direct}/members/bob"),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");

    // A user's listing, paged.
    let (status, body) = api(
        g.addr,
        "GET",
        "/v1/server/users/alice/conversations?limit=1",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["conversations"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    let next = body["next"].as_str().expect("a next page").to_string();
    let (_, rest) = api(
        g.addr,
        "GET",
        &format!("/v1/server/users/alice/conversations?after={next}"),
        None,
    )
    .await;
    let mut all: Vec<&str> = [&body, &rest]
        .iter()
        .flat_map(|b| b["conversations"].as_array().unwrap().iter())
        .map(|c| c["conv"].as_str().unwrap())
        .collect();
    all.sort();
    let mut want = vec!["g1", direct.as_str()];
    want.sort();
    assert_eq!(all, want);

    // The limit of conversations others put a user in holds for the application too.
    assert_eq!(
        api(g.addr, "POST", path, Some(&group("g2", &["alice"])))
            .await
            .0,
        201
    );
    let (status, body) = api(g.addr, "POST", path, Some(&group("g3", &["alice"]))).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
}

#[tokio::test]
async fn posts_of_the_application_are_marked_idempotent_and_in_history() {
    let nats = Nats::start().await;
    let g = gateway(&nats).await;
    api(
        g.addr,
        "POST",
        "/v1/server/conversations",
        Some(&group("room", &["alice", "bob"])),
    )
    .await;
    let mut bob = Client::connect(&g.ws_url(), "bob").await;
    bob.subscribe("room", None).await;
    let post = "/v1/server/conversations/room/messages";
    let as_service =
        json!({"service": "billing", "body": "invoice ready", "idempotency_key": "inv-1"});
    let (status, first) = call(g.addr, Some(MESSAGES_KEY), "POST", post, Some(&as_service)).await;
    assert_eq!(
        (status, &first["duplicate"]),
        (200, &json!(false)),
        "{first}"
    );
    let (_, retry) = call(g.addr, Some(MESSAGES_KEY), "POST", post, Some(&as_service)).await;
    assert_eq!(
        (&retry["seq"], &retry["duplicate"]),
        (&first["seq"], &json!(true)),
        "{retry}"
    );
    let m = bob.msg().await;
    assert_eq!(
        (&m["sender"], &m["via"], &m["body"]),
        (
            &json!("svc_billing"),
            &json!("service"),
            &json!("invoice ready")
        ),
        "{m}"
    );

    // On a member's behalf: named as the member, marked, in its own idempotency space.
    let behalf = json!({"user": "alice", "body": "sent for alice", "idempotency_key": "k1"});
    let (status, body) = api(g.addr, "POST", post, Some(&behalf)).await;
    assert_eq!(status, 200, "{body}");
    let m = bob.msg().await;
    assert_eq!(
        (&m["sender"], &m["via"]),
        (&json!("alice"), &json!("backend")),
        "{m}"
    );
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let (_, duplicate) = alice.post("room", "k1", "alice herself").await;
    assert!(
        !duplicate,
        "the backend's key must not collide with alice's client id"
    );
    let m = bob.msg().await;
    assert_eq!((&m["sender"], m.get("via")), (&json!("alice"), None), "{m}");

    // Not for a non-member, nor into a conversation that does not exist.
    let stranger = json!({"user": "carol", "body": "x", "idempotency_key": "k"});
    let (status, body) = api(g.addr, "POST", post, Some(&stranger)).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let (status, body) = api(
        g.addr,
        "POST",
        "/v1/server/conversations/nope/messages",
        Some(&as_service),
    )
    .await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");

    // History (the application's and a member's) keeps the marks.
    let (status, page) = api(g.addr, "GET", &format!("{post}?limit=10"), None).await;
    assert_eq!(status, 200, "{page}");
    let marks: Vec<(Value, Value)> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["sender"].clone(),
                m.get("via").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    let want = [
        (json!("alice"), Value::Null),
        (json!("alice"), json!("backend")),
        (json!("svc_billing"), json!("service")),
    ];
    assert_eq!(marks, want, "{page}");
    let client_page =
        crate::support::fabric::http_get_auth(g.addr, "/v1/conversations/room/messages", "bob")
            .await;
    let client_page: Value = serde_json::from_str(&client_page).expect("json");
    assert_eq!(client_page["messages"], page["messages"]);
    // No client may speak as a service.
    assert!(ws_refused(&g.ws_url(), &crate::support::fabric::token("svc_billing")).await);
}

#[tokio::test]
async fn a_disconnected_user_is_closed_on_every_gateway_and_old_tokens_stay_out() {
    let nats = Nats::start().await;
    let (g1, g2) = (gateway(&nats).await, gateway(&nats).await);
    api(
        g1.addr,
        "POST",
        "/v1/server/conversations",
        Some(&group("room", &["alice", "bob"])),
    )
    .await;
    let now = chatfabric_nats::wire::now_ms() / 1000;
    let old = token_issued("alice", Some(now - 60));
    let mut ws1 = Client::connect_with_token(&g1.ws_url(), "alice", &old).await;
    let mut ws2 = Client::connect_with_token(&g2.ws_url(), "alice", &old).await;
    let mut sse2 = SseClient::connect_with_token(g2.addr, &old, "", None).await;
    assert_eq!(sse2.status, 200);
    let mut bob = Client::connect(&g2.ws_url(), "bob").await;
    // A plain disconnect closes the connections but keeps the token valid.
    let path = "/v1/server/users/alice/disconnect";
    let (status, body) = api(g1.addr, "POST", path, None).await;
    assert_eq!(
        (status, &body["tokens_before"]),
        (200, &Value::Null),
        "{body}"
    );
    assert_eq!(ws1.closed().await, 4003);
    assert_eq!(ws2.closed().await, 4003);
    let end = loop {
        match sse2.next().await {
            Some(e) if e.kind == "error" => break e.data,
            Some(_) => continue,
            None => panic!("event stream ended without an error event"),
        }
    };
    assert_eq!(end["code"], "disconnected", "{end}");
    // Two closes on g2 (WebSocket and event stream), one on g1, each counted.
    let closes = "chatfabric_gateway_closes_total{kind=\"disconnected\"}";
    g2.await_metric(closes, 2.0).await;
    assert_eq!(g1.metric(closes).await, 1.0);
    let mut ws2 = Client::connect_with_token(&g2.ws_url(), "alice", &old).await;

    // With revocation: closed again, and the old token (and one without iat) is refused on both.
    let (status, body) = api(g2.addr, "POST", path, Some(&json!({"revoke": true}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ws2.closed().await, 4003);
    for g in [&g1, &g2] {
        let url = g.ws_url();
        eventually("the old token is refused", || ws_refused(&url, &old)).await;
        assert!(ws_refused(&url, &token_issued("alice", None)).await);
        let sse = SseClient::connect_with_token(g.addr, &old, "", None).await;
        assert_eq!(sse.status, 401);
        // A token issued since works.
        let fresh = token_issued("alice", Some(chatfabric_nats::wire::now_ms() / 1000));
        Client::connect_with_token(&url, "alice", &fresh)
            .await
            .close()
            .await;
    }
    // Bob was never touched.
    bob.subscribe("room", None).await;
}

#[tokio::test]
async fn a_gateway_cut_off_from_nats_learns_of_a_disconnect_when_it_is_back() {
    let mut nodes = crate::support::fabric::start_cluster().await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let parts1 = cluster_fabric(&urls, 0).await;
    let parts2 = cluster_fabric(&urls, 1).await;
    let node2 = parts2.node(&nodes);
    let keys = |parts: &crate::support::fabric::ClusterGatewayParts| GatewayConfig {
        api_keys: server_api::keys(),
        ..parts.config()
    };
    let g1 = TestGateway::start_on_with(&parts1, keys(&parts1)).await;
    let g2 = TestGateway::start_on_with(&parts2, keys(&parts2)).await;
    let mut alice = Client::connect(&g2.ws_url(), "alice").await;
    // g2's node dies; the disconnect is written through g1 while g2 is cut off.
    nodes[node2].kill();
    // The cluster may answer `unavailable` after losing a node, until the users bucket has a new
    // leader (once over 10 s on nats-server 2.9 with the whole suite running): retry, as a
    // backend would.
    eventually_within(
        Duration::from_secs(30),
        "the disconnect is stored",
        || async {
            let (status, body) =
                api(g1.addr, "POST", "/v1/server/users/alice/disconnect", None).await;
            assert!(status == 200 || code(&body) == "unavailable", "{body}");
            status == 200
        },
    )
    .await;
    nodes[node2].restart().expect("the node restarts");
    // Within the client's wait: g2 reconnects (to any node) and its watch catches up.
    assert_eq!(alice.closed().await, 4003);
}

#[tokio::test]
async fn presence_of_a_list_of_users() {
    let nats = Nats::start().await;
    let _presence = crate::presence::Presence::quick(&nats).await;
    let g = gateway(&nats).await;
    let _alice = Client::connect(&g.ws_url(), "alice").await;

    let path = "/v1/server/presence?user=alice&user=nobody";
    eventually("alice shows online", || async {
        api(g.addr, "GET", path, None).await.1["presence"][0]["online"] == true
    })
    .await;
    let (_, body) = api(g.addr, "GET", path, None).await;
    assert_eq!(
        body["presence"][1],
        json!({"user": "nobody", "online": false, "last_seen": null})
    );
    let many: String = (0..101).map(|i| format!("user=u{i}&")).collect();
    let (status, body) = api(g.addr, "GET", &format!("/v1/server/presence?{many}"), None).await;
    assert_eq!((status, code(&body)), (400, "invalid"), "{body}");
    assert!(
        g.metric("chatfabric_gateway_server_api_requests_total{kind=\"presence\"}")
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn with_client_membership_off_only_the_application_changes_members() {
    let nats = Nats::start().await;
    let mut config = server_api::config(&nats);
    config.client_membership = ClientMembership::Off;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    for frame in [
        json!({"op":"create","kind":"group","members":["bob"],"ref":"c"}),
        json!({"op":"create","kind":"direct","with":"bob","ref":"c"}),
    ] {
        alice.send(frame.clone()).await;
        let r = alice.reply().await;
        assert_eq!(
            (&r["op"], &r["code"], &r["ref"]),
            (&json!("error"), &json!("server_managed"), &json!("c")),
            "{frame}: {r}"
        );
    }
    let (status, _) = api(
        g.addr,
        "POST",
        "/v1/server/conversations",
        Some(&group("team", &["alice"])),
    )
    .await;
    assert_eq!(status, 201);
    for frame in [
        json!({"op":"add_member","conv":"team","user":"bob"}),
        json!({"op":"remove_member","conv":"team","user":"alice"}),
    ] {
        alice.send(frame.clone()).await;
        let r = alice.reply().await;
        assert_eq!(r["code"], "server_managed", "{frame}: {r}");
    }
    // The member still uses the conversation the application made.
    alice.subscribe("team", None).await;
    alice.post("team", "k", "hello").await;
    let (_, body) = api(
        g.addr,
        "POST",
        "/v1/server/conversations/team/members",
        Some(&json!({"user": "bob"})),
    )
    .await;
    assert_eq!(body["members"], json!(["alice", "bob"]));
}

#[tokio::test]
async fn with_client_membership_groups_clients_make_groups_but_not_direct_conversations() {
    let nats = Nats::start().await;
    let mut config = server_api::config(&nats);
    config.client_membership = ClientMembership::Groups;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    alice
        .send(json!({"op":"create","kind":"direct","with":"bob"}))
        .await;
    assert_eq!(alice.reply().await["code"], "server_managed");
    let conv = alice.create_group(&["bob"]).await;
    alice
        .send(json!({"op":"add_member","conv":conv,"user":"carol"}))
        .await;
    assert_eq!(alice.reply().await["op"], "members");
}

#[tokio::test]
async fn a_key_past_its_rate_is_refused_and_other_keys_are_not() {
    let nats = Nats::start().await;
    let mut config = server_api::config(&nats);
    // A burst of 5 that does not refill within the test.
    config.limits.server_api_rate = 0.001;
    config.limits.server_api_burst = 5.0;
    let g = TestGateway::start_with(&nats, config, 8192).await;
    let path = "/v1/server/presence?user=alice";
    for i in 0..5 {
        let (status, body) = call(g.addr, Some(MANAGER_KEY), "GET", path, None).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let (status, body) = call(g.addr, Some(MANAGER_KEY), "GET", path, None).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
    let (status, body) = call(g.addr, Some(FULL_KEY), "GET", path, None).await;
    assert_eq!(status, 200, "another key has its own budget: {body}");
}
