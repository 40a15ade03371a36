//! Benchmark of the webhook role (run it, never as a test):
//!
//! ```text
//! cargo run --release -p chatfabric-webhooks --example throughput -- [messages] [conversations]
//! ```
//!
//! Starts a nats-server (needs `nats-server` on PATH), a receiver that answers 200 at once, and
//! publishes `messages` (default 20000) stored messages round-robin over `conversations` (default
//! 2000) conversations of two members, one of them offline, in two phases:
//!
//! 1. without the webhook role: the sender's publish-to-ack latency and this process's CPU;
//! 2. with it running (coalescing off): the same, and how long until every event was delivered;
//! 3. a backlog published while the role is stopped, then drained by the restarted role: its
//!    throughput in events per second.
//!
//! The difference in CPU between phases 1 and 2 is the role's (and the receiver's, which is
//! small) cost per message; the latencies show whether the role changes a sender's ack (on one
//! machine the role, the receiver and nats-server share the cores).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatfabric_nats::permissions::Role;
use chatfabric_nats::server::{NatsServer, ServerOptions};
use chatfabric_nats::subject::{self, Partitions};
use chatfabric_nats::wire::{now_ms, Membership, StoredMessage};
use chatfabric_nats::{ConnectOptions, ConvId, Fabric, StreamSettings, UserId};
use chatfabric_webhooks::{DeliveryPolicy, Metrics, Signer, WebhookConfig};
use futures::StreamExt;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

/// Publishes in flight at once (the sender side of the fabric: many clients at a time).
const IN_FLIGHT: usize = 64;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let convs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let server = tokio::task::spawn_blocking(|| NatsServer::start(ServerOptions::default()))
        .await
        .expect("spawn")
        .expect("nats-server starts (is it on PATH? /usr/sbin)");
    let fabric = connect(&server.url()).await;
    let conv_ids: Vec<ConvId> = (0..convs)
        .map(|i| ConvId::new(format!("c{i}")).unwrap())
        .collect();
    for c in &conv_ids {
        for user in ["sender", &format!("r-{c}")] {
            let record = Membership {
                added_by: UserId::new("sender").unwrap(),
                added_at: now_ms(),
            };
            let key = subject::member_key(c, &UserId::new(user).unwrap());
            fabric
                .convs
                .put(key, serde_json::to_vec(&record).unwrap().into())
                .await
                .expect("seed membership");
        }
    }

    let before = publish(&fabric, &conv_ids, 0, messages).await;
    println!("phase 1, no webhook role: {before}");

    let received = Arc::new(AtomicU64::new(0));
    let receiver = receiver(received.clone()).await;
    let role = RunningRole::start(&server.url(), &receiver).await;
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let during = publish(&fabric, &conv_ids, messages, messages).await;
    println!("phase 2, webhook role running: {during}");
    role.drained(&received, messages).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "  {} events covering {messages} messages in {elapsed:.2} s; process CPU {:.1} µs/msg: the role and the receiver add {:.1} µs per message",
        role.events(),
        cpu * 1e6 / messages as f64,
        cpu * 1e6 / messages as f64 - before.cpu_per_message_us
    );
    role.stop().await;

    // Phase 3: a backlog the role finds when it (re)starts, drained as fast as it can.
    received.store(0, Ordering::Relaxed);
    let backlog = publish(&fabric, &conv_ids, 2 * messages, messages).await;
    println!("phase 3, backlog published without the role: {backlog}");
    let started = Instant::now();
    let role = RunningRole::start(&server.url(), &receiver).await;
    role.drained(&received, messages).await;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "  the restarted role delivered {} events covering {messages} messages in {elapsed:.2} s: {:.0} events/s",
        role.events(),
        role.events() as f64 / elapsed
    );
    role.stop().await;
    drop(server);
}

/// The webhook role in this process.
struct RunningRole {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
}

impl RunningRole {
    async fn start(url: &str, receiver: &str) -> Self {
        let config = WebhookConfig {
            urls: vec![receiver.to_string()],
            signer: Signer::new([b"bench-secret".to_vec()]).unwrap(),
            coalesce: Duration::ZERO,
            last_messages: 3,
            delivery: DeliveryPolicy {
                concurrency: 64,
                queue_events: 100_000,
                queue_bytes: 256 << 20,
                ..DeliveryPolicy::default()
            },
            durable: "webhooks".into(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            batch: 256,
            tls: chatfabric_webhooks::tls::client_config(None).unwrap(),
            metrics: Metrics::default(),
        };
        let metrics = config.metrics.clone();
        let fabric = connect(url).await;
        let stop = CancellationToken::new();
        let (ready, mut ready_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                chatfabric_webhooks::run(fabric, config, &ready, stop)
                    .await
                    .expect("role runs")
            }
        });
        ready_rx.wait_for(|r| *r).await.expect("role ready");
        Self {
            stop,
            task,
            metrics,
        }
    }

    /// Waits until the receiver was told of `messages` messages and the role holds none.
    async fn drained(&self, received: &AtomicU64, messages: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while (received.load(Ordering::Relaxed) as usize) < messages || self.metrics.held.get() > 0
        {
            assert!(
                Instant::now() < deadline,
                "events missing: {} of {messages} messages notified, {} held",
                received.load(Ordering::Relaxed),
                self.metrics.held.get()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn events(&self) -> u64 {
        let label = chatfabric_webhooks::metrics::KindLabel {
            kind: "message.offline",
        };
        self.metrics.sent.get_or_create(&label).get()
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn connect(url: &str) -> Fabric {
    let (client, _) = chatfabric_nats::connect(&ConnectOptions {
        url: url.to_string(),
        name: "webhooks-bench".into(),
        subscription_capacity: 65_536,
        role: Role::Webhooks,
    })
    .await
    .expect("connect");
    chatfabric_nats::provision(client, StreamSettings::default())
        .await
        .expect("provision")
}

/// What one publishing phase measured.
struct Phase {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_per_message_us: f64,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} msg/s, publish->ack p50 {:.2} ms p99 {:.2} ms, process CPU {:.1} µs/msg",
            self.per_second, self.p50_ms, self.p99_ms, self.cpu_per_message_us
        )
    }
}

async fn publish(fabric: &Fabric, convs: &[ConvId], offset: usize, n: usize) -> Phase {
    let partitions = Partitions::new(1);
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let mut latencies: Vec<f64> = futures::stream::iter(offset..offset + n)
        .map(|i| {
            let conv = &convs[i % convs.len()];
            let msg = StoredMessage {
                id: format!("m{i}"),
                conv: conv.clone(),
                sender: UserId::new("sender").unwrap(),
                client_id: format!("k{i}"),
                ts: now_ms(),
                body: format!("message {i}"),
                via: None,
            };
            let subject = partitions.msg_subject(conv);
            let payload = Bytes::from(serde_json::to_vec(&msg).unwrap());
            async move {
                let t = Instant::now();
                fabric
                    .js
                    .publish(subject, payload)
                    .await
                    .expect("publish")
                    .await
                    .expect("ack");
                t.elapsed().as_secs_f64() * 1000.0
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Phase {
        per_second: n as f64 / elapsed,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        cpu_per_message_us: cpu * 1e6 / n as f64,
    }
}

/// A receiver answering 200 at once; counts the messages its events cover.
async fn receiver(covered: Arc<AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let covered = covered.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let covered = covered.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let count = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["count"].as_u64())
                            .unwrap_or(0);
                        covered.fetch_add(count, Ordering::Relaxed);
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

/// User and system CPU of this process, in seconds (Linux `/proc/self/stat`).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
