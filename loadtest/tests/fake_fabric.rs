//! The whole load generator (coordinator, in-process worker, connections, ledger, reports) against
//! a small in-test gateway that speaks the protocol's WebSocket subset (and, on a real nats-server,
//! the ingest service's `chat.in` requests): it must count a clean run as clean, and catch the one
//! delivery a faulty fabric skips.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: chatfabric_loadtest::LoadtestArgs,
}

/// One subscription: where its frames go and the last seq it was given.
struct Subscriber {
    tx: mpsc::UnboundedSender<String>,
    last: u64,
}

/// A conversation: its members, its messages `(seq, frame without prev)` and its live
/// subscribers.
#[derive(Default)]
struct Conv {
    members: Vec<String>,
    log: Vec<(u64, Value)>,
    subscribers: Vec<Subscriber>,
}

/// A fabric in a mutex: one shared sequence (like a stream partition), and conversations.
#[derive(Default)]
struct Fabric {
    seq: u64,
    convs: HashMap<String, Conv>,
    /// Skip delivering this seq to the first subscriber of its conversation.
    skip: Option<u64>,
}

impl Fabric {
    /// Stores a message and delivers it to the conversation's subscribers; returns its seq.
    fn post(&mut self, conv: &str, client_id: &Value, body: &Value) -> u64 {
        self.seq += 1;
        let (seq, skip) = (self.seq, self.skip);
        let c = self.convs.entry(conv.to_string()).or_default();
        let frame = json!({"op": "msg", "conv": conv, "seq": seq, "id": seq.to_string(),
                           "sender": "u", "client_id": client_id, "ts": 0, "body": body});
        c.log.push((seq, frame.clone()));
        c.subscribers.retain(|s| !s.tx.is_closed());
        for (i, s) in c.subscribers.iter_mut().enumerate() {
            let mut frame = frame.clone();
            frame["prev"] = json!(s.last);
            s.last = seq;
            if !(i == 0 && skip == Some(seq)) {
                let _ = s.tx.send(frame.to_string());
            }
        }
        seq
    }
}

/// The ingest service's post path: requests on `chat.in.<conv>.<sender>` from members only.
async fn serve_ingest(fabric: Arc<Mutex<Fabric>>, nats_url: &str) {
    let client = async_nats::connect(nats_url).await.unwrap();
    let mut requests = client.subscribe("chat.in.*.*").await.unwrap();
    tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            let mut tokens = msg.subject.split('.').skip(2);
            let (conv, sender) = (tokens.next().unwrap(), tokens.next().unwrap());
            let post: Value = serde_json::from_slice(&msg.payload).unwrap();
            let reply = {
                let mut f = fabric.lock().unwrap();
                let member = f
                    .convs
                    .get(conv)
                    .is_some_and(|c| c.members.iter().any(|m| m == sender));
                if member {
                    let seq = f.post(conv, &post["client_id"], &post["body"]);
                    json!({"op": "ack", "conv": conv, "client_id": post["client_id"],
                           "seq": seq, "duplicate": false})
                } else {
                    json!({"op": "error", "code": "forbidden", "message": "not a member"})
                }
            };
            let to = msg.reply.unwrap();
            client.publish(to, reply.to_string().into()).await.unwrap();
        }
    });
}

async fn serve(fabric: Arc<Mutex<Fabric>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(connection(tcp, fabric.clone()));
        }
    });
    url
}

async fn connection(tcp: tokio::net::TcpStream, fabric: Arc<Mutex<Fabric>>) {
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
    });
    let _ = tx.send(json!({"op": "ready", "user": "u", "conn": 1}).to_string());
    while let Some(Ok(frame)) = stream.next().await {
        // Pings (the generator's keep-alive) are answered by tungstenite itself.
        let Message::Text(text) = frame else {
            continue;
        };
        let req: Value = serde_json::from_str(&text).unwrap();
        let mut f = fabric.lock().unwrap();
        match req["op"].as_str().unwrap() {
            "create" => {
                let conv = format!("g{}", req["ref"].as_str().unwrap());
                f.convs.entry(conv.clone()).or_default().members =
                    serde_json::from_value(req["members"].clone()).unwrap();
                let reply = json!({"op": "conversation", "conversation": {"conv": conv, "kind": "group"},
                                   "members": [], "ref": req["ref"]});
                let _ = tx.send(reply.to_string());
            }
            "subscribe" => {
                let conv = req["conv"].as_str().unwrap().to_string();
                let now = f.seq;
                let c = f.convs.entry(conv.clone()).or_default();
                let cursor = req["after"].as_u64().unwrap_or(now);
                let _ = tx
                    .send(json!({"op": "subscribed", "conv": conv, "cursor": cursor}).to_string());
                let mut last = cursor;
                for (seq, frame) in c.log.iter().filter(|(s, _)| *s > cursor) {
                    let mut frame = frame.clone();
                    frame["prev"] = json!(last);
                    last = *seq;
                    let _ = tx.send(frame.to_string());
                }
                c.subscribers.push(Subscriber {
                    tx: tx.clone(),
                    last,
                });
            }
            "send" => {
                let conv = req["conv"].as_str().unwrap();
                let seq = f.post(conv, &req["client_id"], &req["body"]);
                let _ = tx.send(
                    json!({"op": "ack", "conv": conv, "client_id": req["client_id"],
                                       "seq": seq, "duplicate": false})
                    .to_string(),
                );
            }
            _ => {}
        }
    }
}

async fn run_against(fabric: Arc<Mutex<Fabric>>, extra: &[&str]) -> Value {
    let url = serve(fabric).await;
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("r.json");
    let html_path = dir.path().join("r.html");
    let mut argv = vec![
        "loadtest".to_string(),
        format!("--gateway={url}"),
        "--conversations=3".into(),
        "--members=4".into(),
        "--rate=60".into(),
        "--duration=2".into(),
        "--drain=1".into(),
        "--run-id=t".into(),
        format!("--json={}", json_path.display()),
        format!("--html={}", html_path.display()),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let cli = Cli::try_parse_from(argv).unwrap();
    chatfabric_loadtest::run(cli.args).await.unwrap();
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(html.contains("<svg"), "the HTML report has its plots");
    serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_fabric_loses_nothing_and_every_member_gets_every_message() {
    let report = run_against(Arc::new(Mutex::new(Fabric::default())), &[]).await;
    let a = &report["accounting"];
    assert_eq!(report["connect"]["subscribed"], 12);
    let acked = report["totals"]["acked"].as_u64().unwrap();
    assert!(acked >= 100, "about 120 messages in 2 s at 60/s: {acked}");
    assert_eq!(
        a["expected_deliveries"].as_u64().unwrap(),
        acked * 4,
        "4 members each"
    );
    assert_eq!(report["totals"]["delivered"].as_u64().unwrap(), acked * 4);
    assert_eq!(
        (a["lost"].as_u64(), a["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(a["order_violations"], 0);
    assert!(report["e2e"]["count"].as_u64().unwrap() == acked * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_delivery_is_lost_and_breaks_the_chain_and_a_storm_resumes_cleanly() {
    let fabric = Fabric {
        skip: Some(5),
        ..Fabric::default()
    };
    let report = run_against(Arc::new(Mutex::new(fabric)), &["--storm-at=1"]).await;
    let a = &report["accounting"];
    assert_eq!(a["lost"], 1, "{a}");
    assert_eq!(a["receivers_with_loss"], 1);
    assert_eq!(
        a["order_violations"], 1,
        "the next frame's prev points at the skipped seq"
    );
    assert_eq!(
        a["duplicates"], 0,
        "resuming from the cursor replays nothing twice"
    );
    assert_eq!(
        report["totals"]["reconnects"], 12,
        "every connection dropped and resumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_publishers_are_members_and_their_posts_are_delivered_and_accounted() {
    let nats = tokio::task::spawn_blocking(|| {
        chatfabric_nats::server::NatsServer::start(Default::default())
    })
    .await
    .unwrap()
    .expect("nats-server must be on PATH for this test");
    let fabric = Arc::new(Mutex::new(Fabric::default()));
    serve_ingest(fabric.clone(), &nats.url()).await;
    let nats_url = format!("--nats-url={}", nats.url());
    // 12 WebSocket senders and 4 publishers share the 60 msg/s.
    let report = run_against(fabric, &["--nats-publishers=4", &nats_url]).await;
    let t = &report["totals"];
    let (sent, acked) = (
        t["nats_sent"].as_u64().unwrap(),
        t["nats_acked"].as_u64().unwrap(),
    );
    // 4 of 16 senders: about 30 posts in 2 s at 60/s.
    assert!(sent >= 20, "{t}");
    assert_eq!(
        acked, sent,
        "every member publisher is acked: {:?}",
        report["errors"]
    );
    assert_eq!(report["nats_ack"]["count"].as_u64(), Some(acked));
    let a = &report["accounting"];
    let all_acked = t["acked"].as_u64().unwrap();
    assert!(all_acked > acked, "WebSocket senders still send");
    assert_eq!(a["expected_deliveries"].as_u64().unwrap(), all_acked * 4);
    assert_eq!(
        (a["lost"].as_u64(), a["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        report["e2e"]["count"].as_u64(),
        Some(all_acked * 4),
        "posts carry the send time"
    );
}
