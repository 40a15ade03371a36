//! The webhook role against a real nats-server, gateway, presence service and a local receiver:
//! offline members notified once per coalescing window (online ones never), membership events,
//! signatures, retries under the same id, dead letters while messages keep flowing, and a kill -9
//! of the role's process that loses no event.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chatfabric_webhooks::verify;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::presence::Presence;
use crate::support::hooks::{
    admin, consumer_info, covered, for_user, held, room, spawn_hooks, Hooks, SECRET, WAIT,
};
use crate::support::receiver::{Answer, Received, Receiver, TestCa};
use crate::support::{Client, Nats, TestGateway};

#[tokio::test]
async fn an_offline_member_gets_one_signed_event_per_window_and_online_ones_none() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let _presence = Presence::quick(&nats).await;
    let (mut alice, _carol) = room(&nats, &g).await;
    let receiver = Receiver::start(Answer::Ok).await;
    let window = Duration::from_secs(3);
    let _hooks = Hooks::start(&nats, &[receiver.url()], |c| c.coalesce = window).await;

    let seqs = alice.post_numbered("room", 0..5).await;
    let first = receiver
        .wait_until(WAIT, |r| !for_user(r, "bob").is_empty())
        .await;
    // The window's messages are all in the one event, and nothing else follows for it.
    tokio::time::sleep(window + Duration::from_secs(1)).await;
    let events = receiver.requests();
    assert_eq!(events.len(), first.len(), "{events:#?}");
    let bob = for_user(&events, "bob");
    assert_eq!(bob.len(), 1, "one event per window: {bob:#?}");
    let e = &bob[0].json;
    assert_eq!(e["conv"], "room");
    assert_eq!(e["count"], 5, "{e}");
    assert_eq!(
        (e["first_seq"].as_u64(), e["last_seq"].as_u64()),
        (Some(seqs[0]), Some(seqs[4]))
    );
    let last: Vec<&str> = e["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(last, vec!["m2", "m3", "m4"]);
    assert_eq!(e["messages"][2]["sender"], "alice");
    assert_eq!(e["messages"][2]["seq"].as_u64(), Some(seqs[4]));
    assert_eq!(bob[0].id, e["id"].as_str().unwrap());

    // The next burst is the next window's event.
    let more = alice.post_numbered("room", 5..7).await;
    let events = receiver
        .wait_until(WAIT, |r| for_user(r, "bob").len() == 2)
        .await;
    let second = &for_user(&events, "bob")[1].json;
    assert_eq!(second["count"], 2);
    assert_eq!(second["first_seq"].as_u64(), Some(more[0]));

    // Online members (carol) and the sender (alice) got nothing; every request verifies.
    assert!(
        events.iter().all(|r| r.json["user"] == "bob"),
        "{events:#?}"
    );
    let now = chatfabric_nats::wire::now_ms() / 1000;
    for r in &events {
        assert_eq!(
            verify(SECRET.as_bytes(), &r.signature, &r.body, now, 300),
            Ok(()),
            "{}",
            r.signature
        );
        assert!(verify(b"another secret", &r.signature, &r.body, now, 300).is_err());
        assert!(verify(SECRET.as_bytes(), &r.signature, b"{}", now, 300).is_err());
    }
}

#[tokio::test]
async fn membership_changes_produce_events() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let receiver = Receiver::start(Answer::Ok).await;
    let _hooks = Hooks::start(&nats, &[receiver.url()], |_| {}).await;
    let mut alice = Client::connect(&g.ws_url(), "alice").await;
    let conv = alice.create_group(&["bob"]).await;
    alice
        .send(json!({"op":"remove_member","conv":conv,"user":"bob"}))
        .await;
    let r = alice.reply().await;
    assert_eq!(r["members"], json!(["alice"]), "{r}");

    let kinds = |r: &[Received]| -> Vec<(String, String)> {
        r.iter()
            .map(|r| {
                (
                    r.json["type"].as_str().unwrap_or("").to_string(),
                    r.json["user"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let events = receiver.wait_until(WAIT, |r| r.len() >= 3).await;
    let mut seen = kinds(&events);
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("member.added".to_string(), "alice".to_string()),
            ("member.added".to_string(), "bob".to_string()),
            ("member.removed".to_string(), "bob".to_string()),
        ]
    );
    let added = events
        .iter()
        .find(|r| r.json["type"] == "member.added" && r.json["user"] == "bob")
        .unwrap();
    assert_eq!(added.json["conv"], conv.as_str());
    assert_eq!(added.json["added_by"], "alice");
    let removed = events
        .iter()
        .find(|r| r.json["type"] == "member.removed")
        .unwrap();
    assert!(removed.json["revision"].as_u64() > added.json["revision"].as_u64());
    assert_ne!(removed.id, added.id);
}

#[tokio::test]
async fn a_receiver_failing_the_first_tries_gets_every_event_under_the_same_id() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let _presence = Presence::quick(&nats).await;
    let (mut alice, _carol) = room(&nats, &g).await;
    let receiver = Receiver::start(Answer::FailFirst(2)).await;
    let _hooks = Hooks::start(&nats, &[receiver.url()], |c| {
        c.coalesce = Duration::from_millis(200)
    })
    .await;

    let mut seqs = Vec::new();
    for burst in 0..3 {
        seqs.extend(alice.post_numbered("room", burst * 2..burst * 2 + 2).await);
        // Each burst its own window: wait for its event before the next.
        let want: BTreeSet<u64> = seqs.iter().copied().collect();
        receiver
            .wait_until(WAIT, |r| {
                let ok: Vec<Received> = r.iter().filter(|r| r.status == 200).cloned().collect();
                want.is_subset(&covered(&ok, "bob"))
            })
            .await;
    }
    let requests = receiver.requests();
    let mut by_id: HashMap<&str, Vec<&Received>> = HashMap::new();
    for r in &requests {
        by_id.entry(&r.id).or_default().push(r);
    }
    assert!(by_id.len() >= 3, "{requests:#?}");
    for (id, tries) in by_id {
        let statuses: Vec<u16> = tries.iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![503, 503, 200], "{id}");
        let attempts: Vec<u32> = tries.iter().map(|r| r.attempt).collect();
        assert_eq!(attempts, vec![1, 2, 3], "{id}");
        assert!(
            tries
                .iter()
                .all(|r| r.body == tries[0].body && r.json["id"] == id),
            "{id}: the same event each time"
        );
    }
}

#[tokio::test]
async fn an_always_failing_receiver_dead_letters_while_the_others_get_everything() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let _presence = Presence::quick(&nats).await;
    let (mut alice, _carol) = room(&nats, &g).await;
    let (good, bad) = (
        Receiver::start(Answer::Ok).await,
        Receiver::start(Answer::Fail).await,
    );
    let _hooks = Hooks::start(&nats, &[bad.url(), good.url()], |c| {
        c.coalesce = Duration::ZERO;
        c.delivery.max_attempts = 2;
    })
    .await;

    // Every send is acknowledged as usual while the bad receiver fails.
    let seqs = alice.post_numbered("room", 0..20).await;
    let want: BTreeSet<u64> = seqs.iter().copied().collect();
    good.wait_until(WAIT, |r| want.is_subset(&covered(r, "bob")))
        .await;

    // Each of the bad receiver's events is in the dead-letter stream, with its URL and reason.
    let js = admin(&nats).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let bad_ids: BTreeSet<String> = loop {
        let ids: BTreeSet<String> = bad.requests().into_iter().map(|r| r.id).collect();
        let stored = js
            .get_stream("CHAT_WEBHOOKS_DEAD")
            .await
            .expect("dead-letter stream")
            .info()
            .await
            .expect("info")
            .state
            .messages;
        if !ids.is_empty()
            && stored == ids.len() as u64
            && ids == good.delivered().into_iter().map(|r| r.id).collect()
        {
            break ids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters: {stored} of {}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let consumer = js
        .get_stream("CHAT_WEBHOOKS_DEAD")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut letters = consumer
        .fetch()
        .max_messages(bad_ids.len())
        .messages()
        .await
        .unwrap();
    let mut dead_ids = BTreeSet::new();
    while let Some(Ok(letter)) = letters.next().await {
        let h = letter.headers.clone().expect("headers");
        assert_eq!(h.get("Chatfabric-Webhook-Url").unwrap().as_str(), bad.url());
        assert_eq!(h.get("Chatfabric-Dead-Reason").unwrap().as_str(), "failed");
        assert_eq!(h.get("Chatfabric-Attempts").unwrap().as_str(), "2");
        assert_eq!(h.get("Chatfabric-Last-Error").unwrap().as_str(), "HTTP 500");
        let body: Value = serde_json::from_slice(&letter.payload).unwrap();
        assert_eq!(
            h.get("Chatfabric-Event-Id").unwrap().as_str(),
            body["id"].as_str().unwrap()
        );
        dead_ids.insert(body["id"].as_str().unwrap().to_string());
        if dead_ids.len() == bad_ids.len() {
            break;
        }
    }
    assert_eq!(dead_ids, bad_ids);
    // And every message was acked: nothing left for the role.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = js
            .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                "webhooks",
                "CHAT_MSGS_0",
            )
            .await
            .unwrap()
            .cached_info()
            .clone();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn kill_9_of_the_webhook_role_loses_no_event() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let _presence = Presence::quick(&nats).await;
    let (mut alice, _carol) = room(&nats, &g).await;
    let receiver = Receiver::start(Answer::Ok).await;
    let (mut hooks, hooks_port) = spawn_hooks(&nats, &receiver).await;

    let mut seqs = alice.post_numbered("room", 0..10).await;
    receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    // Killed once it holds the next messages in an open window (delivered to it, not acked).
    seqs.extend(alice.post_numbered("room", 10..20).await);
    let deadline = tokio::time::Instant::now() + WAIT;
    while held(hooks_port).await < 10.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the role never held the messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Held means not acknowledged: a second later (its window is 3 s) the server still counts
    // them unacked, so the kill below loses them unless redelivery brings them back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let info = consumer_info(&admin(&nats).await).await;
    assert!(info.num_ack_pending >= 10, "held, so not acked: {info:?}");
    hooks.kill();
    seqs.extend(alice.post_numbered("room", 20..30).await);
    let _hooks = spawn_hooks(&nats, &receiver).await;
    seqs.extend(alice.post_numbered("room", 30..40).await);

    let want: BTreeSet<u64> = seqs.iter().copied().collect();
    let events = receiver
        .wait_until(WAIT, |r| want.is_subset(&covered(r, "bob")))
        .await;
    // Deduplicated by id, each window's content arrives exactly once: one id, one content.
    let content = |r: &Received| {
        let mut v = r.json.clone();
        v.as_object_mut().unwrap().remove("created_at");
        v.to_string()
    };
    let mut by_id: HashMap<&str, String> = HashMap::new();
    let mut by_content: HashMap<String, &str> = HashMap::new();
    for r in &events {
        let c = content(r);
        assert_eq!(
            by_id.entry(&r.id).or_insert_with(|| c.clone()),
            &c,
            "one id, one content"
        );
        assert_eq!(
            *by_content.entry(c).or_insert(&r.id),
            r.id.as_str(),
            "one content, one id"
        );
    }
}

#[tokio::test]
async fn a_receiver_whose_queue_is_full_gets_overflow_dead_letters_and_the_others_wait_for_nothing()
{
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let _presence = Presence::quick(&nats).await;
    let (mut alice, _carol) = room(&nats, &g).await;
    let (good, bad) = (
        Receiver::start(Answer::Ok).await,
        Receiver::start(Answer::Fail).await,
    );
    // The bad URL's two queue places stay taken (its retries wait a minute): the rest overflows.
    let _hooks = Hooks::start(&nats, &[bad.url(), good.url()], |c| {
        c.coalesce = Duration::ZERO;
        c.delivery.queue_events = 2;
        c.delivery.retry_min = Duration::from_secs(60);
        c.delivery.retry_max = Duration::from_secs(60);
    })
    .await;
    let mut seqs = Vec::new();
    for i in 0..6 {
        seqs.extend(alice.post_numbered("room", i..i + 1).await);
        // One event each: wait for it before the next message.
        let want: BTreeSet<u64> = seqs.iter().copied().collect();
        good.wait_until(WAIT, |r| want.is_subset(&covered(r, "bob")))
            .await;
    }
    let js = admin(&nats).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stored = js
            .get_stream("CHAT_WEBHOOKS_DEAD")
            .await
            .expect("dead-letter stream")
            .info()
            .await
            .expect("info")
            .state
            .messages;
        // Six events: two wait in the bad URL's queue, four overflowed, never attempted.
        if stored == 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stored} dead letters"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = js
        .get_stream("CHAT_WEBHOOKS_DEAD")
        .await
        .unwrap()
        .get_last_raw_message_by_subject("chat.webhooks.dead.overflow")
        .await
        .expect("an overflow dead letter");
    let body: Value = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!(body["type"], "message.offline");
    assert_eq!(
        bad.requests().len(),
        2,
        "only the queued events were attempted"
    );
}

#[tokio::test]
async fn an_https_receiver_gets_signed_events_when_its_ca_is_trusted_and_nothing_otherwise() {
    let nats = Nats::start().await;
    let g = TestGateway::start(&nats).await;
    let _presence = Presence::quick(&nats).await;
    let (mut alice, _carol) = room(&nats, &g).await;
    let ca = TestCa::new();
    let (trusted, untrusted) = (
        Receiver::start_tls(Answer::Ok, &ca).await,
        Receiver::start_tls(Answer::Ok, &ca).await,
    );
    // One role trusts the receivers' CA (--webhook-ca-file), the other (its own durable
    // consumers) only the system's roots.
    let _trusting = Hooks::start(&nats, &[trusted.url()], |c| {
        c.coalesce = Duration::ZERO;
        c.tls = chatfabric_webhooks::tls::client_config(Some(ca.ca_file())).expect("CA file");
    })
    .await;
    let _distrusting = Hooks::start(&nats, &[untrusted.url()], |c| {
        c.coalesce = Duration::ZERO;
        c.delivery.max_attempts = 1;
        c.durable = "strict".into();
    })
    .await;

    let seqs = alice.post_numbered("room", 0..3).await;
    let want: BTreeSet<u64> = seqs.iter().copied().collect();
    let events = trusted
        .wait_until(WAIT, |r| want.is_subset(&covered(r, "bob")))
        .await;
    let now = chatfabric_nats::wire::now_ms() / 1000;
    for r in &events {
        assert_eq!(
            verify(SECRET.as_bytes(), &r.signature, &r.body, now, 300),
            Ok(())
        );
    }

    // The other role refused the certificate: no request reached its receiver, and each event
    // is a dead letter naming the reason.
    let js = admin(&nats).await;
    let consumer = js
        .get_stream("CHAT_WEBHOOKS_DEAD")
        .await
        .expect("dead-letter stream")
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .expect("consumer");
    let mut letters = consumer.messages().await.expect("messages");
    let letter = tokio::time::timeout(WAIT, letters.next())
        .await
        .expect("a dead letter in time")
        .expect("a letter")
        .expect("a message");
    let h = letter.headers.clone().expect("headers");
    assert_eq!(
        h.get("Chatfabric-Webhook-Url").unwrap().as_str(),
        untrusted.url()
    );
    let error = h.get("Chatfabric-Last-Error").unwrap().as_str();
    assert!(error.contains("certificate"), "{error}");
    assert!(untrusted.requests().is_empty());
}
