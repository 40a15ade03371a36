//! The production topology (`deploy/local/run.sh`): clients only through HAProxy, gateways
//! stopped and killed under their clients, the NATS node leading a stream killed under load, and
//! every query of the Grafana dashboard evaluated against the live Prometheus (which scrapes every
//! role, the webhook role included, and every NATS node).

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::dashboard;
use crate::support::fabric::token;
use crate::support::receiver::{Answer, Receiver};
use crate::support::sse::SseClient;
use crate::support::stack::{http_get, metric, Stack};
use crate::support::Client;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bounds every wait of these tests: nothing here should take that long on a healthy stack.
const DEADLINE: Duration = Duration::from_secs(60);

/// Connects `user` through the load balancer, retrying while no gateway takes it.
async fn connect(url: &str, user: &str) -> Ws {
    let until = Instant::now() + DEADLINE;
    loop {
        let mut req = url.into_client_request().expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token(user)).parse().expect("header"),
        );
        match timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(req),
        )
        .await
        {
            Ok(Ok((ws, _))) => return ws,
            _ if Instant::now() < until => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("{user}: no gateway through {url} within {DEADLINE:?}: {other:?}"),
        }
    }
}

/// What reading a connection gave.
enum Read {
    Frame(Value),
    /// Nothing for a second.
    Idle,
    /// Closed, reset, or silent for 10 s.
    Ended,
}

/// The next JSON frame within a second.
async fn next_frame(ws: &mut Ws, idle: &mut u32) -> Read {
    loop {
        match timeout(Duration::from_secs(1), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                *idle = 0;
                return Read::Frame(serde_json::from_str(&t).expect("server frames are JSON"));
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return Read::Ended,
            Err(_) if *idle >= 10 => return Read::Ended,
            Err(_) => {
                *idle += 1;
                return Read::Idle;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// What one member saw: every `msg` in order, and how often it had to reconnect.
#[derive(Default)]
struct Seen {
    msgs: Vec<(u64, String)>,
    reconnects: usize,
}

/// Follows `conv` as `user` until it has seen seq `until` (read from `last_seq` once the sender
/// is done), reconnecting through the balancer and resuming after its cursor whenever the
/// connection ends. Asserts the `prev` chain, so any gap, reorder or duplicate fails.
async fn follow(url: String, user: String, conv: String, last_seq: Arc<AtomicUsize>) -> Seen {
    let mut seen = Seen::default();
    let mut cursor = 0u64;
    let mut first = true;
    loop {
        if !first {
            seen.reconnects += 1;
        }
        first = false;
        let mut ws = connect(&url, &user).await;
        let sub = json!({"op":"subscribe","conv":conv,"after":cursor});
        if ws
            .send(Message::Text(sub.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        let mut idle = 0;
        loop {
            let last = last_seq.load(Ordering::SeqCst) as u64;
            if last > 0 && cursor >= last {
                return seen;
            }
            let f = match next_frame(&mut ws, &mut idle).await {
                Read::Frame(f) if f["op"] == "msg" => f,
                Read::Frame(_) => continue,
                // Waiting for the sender (or its last seq) is not a dead connection.
                Read::Idle => {
                    idle = idle.min(5);
                    continue;
                }
                Read::Ended => break,
            };
            let seq = f["seq"].as_u64().expect("seq");
            assert_eq!(
                f["prev"].as_u64(),
                Some(cursor),
                "{user}: gap or repeat: {f}"
            );
            cursor = seq;
            seen.msgs
                .push((seq, f["client_id"].as_str().expect("client_id").into()));
        }
    }
}

/// Sends `k<i>` for each `i` in `range` as `user`, each until acked: after a disconnect or an
/// `unavailable` error it reconnects and retries with the same client id, as clients must.
/// Returns the acked (client id, seq) pairs; `acked` counts them as they come.
async fn send_all(
    url: &str,
    user: &str,
    conv: &str,
    range: std::ops::Range<usize>,
    acked: &AtomicUsize,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut ws = connect(url, user).await;
    for i in range {
        let id = format!("k{i}");
        let until = Instant::now() + DEADLINE;
        let seq = loop {
            assert!(Instant::now() < until, "{id} not acked within {DEADLINE:?}");
            let send = json!({"op":"send","conv":conv,"client_id":id,"body":format!("m{i}")});
            if ws
                .send(Message::Text(send.to_string().into()))
                .await
                .is_ok()
            {
                let mut idle = 0;
                let reply = loop {
                    match next_frame(&mut ws, &mut idle).await {
                        Read::Frame(f) if f["op"] == "ack" && f["client_id"] == id.as_str() => {
                            break Some(Ok(f["seq"].as_u64().expect("seq")))
                        }
                        // A failed send's error names it in `ref`; only `unavailable` is retried.
                        Read::Frame(f) if f["op"] == "error" => {
                            assert!(f["ref"] == id.as_str() && f["code"] == "unavailable", "{f}");
                            break Some(Err(()));
                        }
                        Read::Frame(_) | Read::Idle => continue,
                        Read::Ended => break None,
                    }
                };
                match reply {
                    Some(Ok(seq)) => break seq,
                    Some(Err(())) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    None => {}
                }
            }
            ws = connect(url, user).await;
        };
        acked.fetch_add(1, Ordering::SeqCst);
        out.push((id, seq));
        // 40 sends/s, within a connection's default rate limit (50 frames/s).
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    out
}

/// Every acked message is seen exactly once by every member, in one gap-free order.
fn assert_complete(seen: &[Seen], acked: &[(String, u64)]) {
    let sent: BTreeSet<&str> = acked.iter().map(|(id, _)| id.as_str()).collect();
    for (m, s) in seen.iter().enumerate() {
        let ids: Vec<&str> = s.msgs.iter().map(|(_, id)| id.as_str()).collect();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "member {m} saw a message twice");
        assert_eq!(
            unique, sent,
            "member {m} did not see exactly what was acked"
        );
        let seqs: HashSet<u64> = s.msgs.iter().map(|(seq, _)| *seq).collect();
        for (id, seq) in acked {
            assert!(seqs.contains(seq), "member {m} lacks acked {id} at {seq}");
        }
    }
}

async fn gateway_metric(stack: &Stack, gateway: &str, series: &str) -> f64 {
    metric(&http_get(stack.addr(gateway), "/metrics").await, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_through_the_balancer_survive_gateway_stop_and_kill_and_the_dashboard_has_data() {
    let receiver = Receiver::start(Answer::Ok).await;
    let stack = Stack::start_with_webhooks(&receiver.url());
    let url = stack.ws_url();
    let users: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    let mut owner = Client::connect(&url, "u0").await;
    let others: Vec<&str> = users[1..].iter().map(String::as_str).collect();
    let conv = owner.create_group(&others).await;

    let last_seq = Arc::new(AtomicUsize::new(0));
    let members: Vec<_> = users
        .iter()
        .map(|u| {
            tokio::spawn(follow(
                url.clone(),
                u.clone(),
                conv.clone(),
                last_seq.clone(),
            ))
        })
        .collect();
    // Both gateways serve clients: the balancer spreads them.
    let until = Instant::now() + DEADLINE;
    while gateway_metric(&stack, "GATEWAY_1", "chatfabric_gateway_connections").await < 1.0
        || gateway_metric(&stack, "GATEWAY_2", "chatfabric_gateway_connections").await < 1.0
    {
        assert!(
            Instant::now() < until,
            "the balancer did not use both gateways"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every target up (and so scraped once: counters' increases from here on show in rates):
    // each role's processes, the balancer and the three NATS nodes' exporters.
    let expected = [
        ("gateway", 2),
        ("haproxy", 1),
        ("nats", 3),
        ("persister", 2),
        ("presence", 2),
        ("webhooks", 1),
    ];
    let until = Instant::now() + DEADLINE;
    loop {
        let targets = stack.targets().await;
        let down: Vec<_> = targets.iter().filter(|(_, _, h)| h != "up").collect();
        let mut jobs = std::collections::BTreeMap::new();
        for (job, _, _) in &targets {
            *jobs.entry(job.as_str()).or_insert(0) += 1;
        }
        if down.is_empty() && jobs.into_iter().eq(expected) {
            break;
        }
        assert!(Instant::now() < until, "targets not all up: {targets:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Traffic for every panel: sends, deliveries, a history page, an error, an SSE stream.
    let acked = AtomicUsize::new(0);
    let mut all = send_all(&url, "u1", &conv, 0..50, &acked).await;
    owner
        .send(json!({"op":"history","conv":conv,"limit":20,"ref":"h"}))
        .await;
    assert_eq!(owner.reply().await["op"], "history");
    owner
        .send(json!({"op":"subscribe","conv":"not-mine","ref":"x"}))
        .await;
    assert_eq!(owner.reply().await["op"], "error");
    let mut sse = SseClient::connect(stack.addr("LB"), "u2", &format!("?conv={conv}"), None).await;
    assert_eq!(sse.status, 200);
    let (seq, _) = owner.post(&conv, "sse-1", "through the balancer").await;
    all.push(("sse-1".into(), seq));
    assert_eq!(sse.msg().await.data["client_id"], "sse-1");
    // A message for a member who is offline: the webhook role tells the receiver (after its
    // coalescing window), and its delivery latency has an observation.
    let quiet = owner.create_group(&["offline-1"]).await;
    owner.post(&quiet, "w-1", "for someone offline").await;
    receiver
        .wait_until(DEADLINE, |got| {
            got.iter()
                .any(|r| r.status == 200 && r.json["type"] == "message.offline")
        })
        .await;

    dashboard::print(&dashboard::has_data(&stack, DEADLINE).await);

    // Stop gateway-2 cleanly while messages flow (it drains: its clients reconnect through the
    // balancer to gateway-1), start it again, then kill gateway-1 the same way: every client
    // ends on gateway-2, and every member saw every acked message once, in order.
    all.extend(send_while(&stack, &url, &conv, 50..200, || stack.term("gateway-2")).await);
    stack.restart("gateway-2");
    let until = Instant::now() + DEADLINE;
    while !http_get(stack.addr("LB_STATS"), "/metrics")
        .await
        .contains(r#"haproxy_server_status{proxy="gateways",server="gateway-2",state="UP"} 1"#)
    {
        assert!(Instant::now() < until, "gateway-2 not back in the balancer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all.extend(send_while(&stack, &url, &conv, 200..350, || stack.kill("gateway-1")).await);
    let last = all.iter().map(|(_, s)| *s).max().expect("acked") as usize;
    last_seq.store(last, Ordering::SeqCst);
    let mut seen = Vec::new();
    for m in members {
        seen.push(
            timeout(DEADLINE, m)
                .await
                .expect("member catches up")
                .expect("member"),
        );
    }
    assert_complete(&seen, &all);
    // Each member was on a stopped gateway at least once: on gateway-2 at the stop, or on
    // gateway-1 at the kill (where the stop had sent gateway-2's members too).
    assert!(
        seen.iter().all(|s| s.reconnects >= 1),
        "a member never had to move"
    );
    let reconnects: usize = seen.iter().map(|s| s.reconnects).sum();
    println!(
        "gateway-2 stopped, then gateway-1 killed: {reconnects} reconnects of 8 members; \
         {} messages each, none lost or repeated",
        all.len()
    );
}

/// Sends `range` as u1 and runs `fault` once 50 of them are acked; returns the acked sends.
async fn send_while(
    stack: &Stack,
    url: &str,
    conv: &str,
    range: std::ops::Range<usize>,
    fault: impl FnOnce(),
) -> Vec<(String, u64)> {
    let acked = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (url, conv, acked) = (url.to_string(), conv.to_string(), acked.clone());
        tokio::spawn(async move { send_all(&url, "u1", &conv, range, &acked).await })
    };
    let until = Instant::now() + DEADLINE;
    while acked.load(Ordering::SeqCst) < 50 {
        assert!(Instant::now() < until, "sends stalled before the fault");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fault();
    timeout(DEADLINE, sender)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "sends did not resume; gateway-1 log:\n{}",
                stack.log("gateway-1")
            )
        })
        .expect("sender")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_nats_node_leading_a_stream_loses_no_acknowledged_message() {
    let stack = Stack::start();
    let url = stack.ws_url();
    let mut owner = Client::connect(&url, "alice").await;
    let conv = owner.create_group(&["bob"]).await;
    let partitions: u16 = stack.var("PARTITIONS").parse().expect("partitions");
    let conv_id = chatfabric_nats::ConvId::new(conv.as_str()).expect("conv id");
    let stream = chatfabric_nats::subject::stream_name(
        chatfabric_nats::subject::Partitions::new(partitions).of(&conv_id),
    );
    // One node is enough to read the stream's leader (before any node dies).
    let first_node = stack
        .var("NATS_URLS")
        .split(',')
        .next()
        .expect("a NATS URL");
    // As the gateway user (the stack runs every role with least privilege): its inbox prefix.
    let servers = chatfabric_nats::connect::servers(first_node).expect("NATS URL");
    let options = async_nats::ConnectOptions::new()
        .custom_inbox_prefix(chatfabric_nats::permissions::Role::Gateway.inbox_prefix());
    let nats = chatfabric_nats::connect::with_url_credentials(options, &servers)
        .connect(servers)
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(nats);
    let info = js
        .get_stream(&stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .clone();
    let cluster = info.cluster.expect("clustered stream");
    assert_eq!(info.config.num_replicas, 3, "{stream} is not R3");
    let leader = cluster.leader.expect("a leader");

    let acked = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (url, conv, acked) = (url.clone(), conv.clone(), acked.clone());
        tokio::spawn(async move { send_all(&url, "bob", &conv, 0..300, &acked).await })
    };
    let until = Instant::now() + DEADLINE;
    while acked.load(Ordering::SeqCst) < 100 {
        assert!(Instant::now() < until, "sends stalled before the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stack.kill(&leader);
    let sent = timeout(DEADLINE * 2, sender)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "sends did not resume; gateway log:\n{}",
                stack.log("gateway-1")
            )
        })
        .expect("sender");

    // A fresh client replays the conversation from the surviving nodes: every ack is there, once.
    let last = sent.iter().map(|(_, s)| *s).max().expect("acked");
    let replay = tokio::spawn(follow(
        url.clone(),
        "alice".into(),
        conv.clone(),
        Arc::new(AtomicUsize::new(last as usize)),
    ));
    let seen = timeout(DEADLINE, replay)
        .await
        .expect("replay")
        .expect("replay");
    assert_complete(&[seen], &sent);
    // The persisters store everything too, behind the new leader.
    let until = Instant::now() + DEADLINE;
    loop {
        let unstored = stack
            .query(&format!(
                "max(chatfabric_persister_unstored_messages{{partition=\"{}\"}})",
                &stream["CHAT_MSGS_".len()..]
            ))
            .await;
        if unstored.first().and_then(|r| r["value"][1].as_str()) == Some("0") {
            break;
        }
        assert!(
            Instant::now() < until,
            "persisters did not catch up: {unstored:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "killed {leader}, leader of {stream}: all {} acked messages kept",
        sent.len()
    );
}
