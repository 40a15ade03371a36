//! History page latency: `History::page` against a real nats-server and a SQLite store.
//!
//! `cargo bench -p chatfabric-gateway --bench history`
//!
//! The fixture publishes [`MESSAGES`] messages over [`CONVS`] conversations to JetStream and writes
//! the same records to a SQLite store whose watermark leaves the newest [`ABOVE_WATERMARK`]
//! messages (about ten per conversation) to JetStream. Three kinds of page, 50 messages each:
//!
//! - **cached**: the same page again and again (a page cache hit; still one JetStream request to
//!   find the conversation's head, which every call makes);
//! - **uncached**: a random conversation and a random `before` cursor below the watermark, read
//!   through a `History` with no page cache, so every call reads the store;
//! - **above watermark**: the newest page of a random conversation, uncached: ~10 messages from
//!   JetStream (read from the stream leader), the rest from the store.
//!
//! The targets are p99s, so before criterion's means the bench times [`SAMPLES`] single calls of
//! each kind and prints p50/p90/p99/max.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatfabric_gateway::history::History;
use chatfabric_nats::server::NatsServer;
use chatfabric_nats::wire::{StoredMessage, MSG_ID_HEADER};
use chatfabric_nats::{ConvId, Fabric, StreamSettings, UserId};
use chatfabric_storage::{HistoryStore, SqliteConfig, SqliteStore, StoredRecord, Watermark};
use criterion::Criterion;
use futures::StreamExt;
use tokio::runtime::Runtime;

/// Messages in the fixture.
const MESSAGES: u64 = 100_000;
/// Conversations they are spread over (round robin).
const CONVS: u64 = 1000;
/// The newest messages, left above the store's watermark.
const ABOVE_WATERMARK: u64 = 10_000;
/// Messages per page.
const LIMIT: usize = 50;
/// Single calls timed per kind for the percentiles.
const SAMPLES: usize = 2000;

/// Everything the pages are read from; the server and the store's directory live as long as it.
struct Fixture {
    _server: NatsServer,
    _dir: tempfile::TempDir,
    store: Arc<dyn HistoryStore>,
    fabric: Fabric,
    /// The highest stream sequence, and the store's watermark.
    last_seq: u64,
    watermark: u64,
}

fn conv(i: u64) -> ConvId {
    ConvId::new(format!("bench-conv-{i}")).expect("valid conv")
}

impl Fixture {
    async fn new() -> Self {
        let server = NatsServer::start(Default::default()).expect("start nats-server");
        let client = async_nats::connect(server.url()).await.expect("connect");
        let fabric = chatfabric_nats::provision(client, StreamSettings::default())
            .await
            .expect("provision");
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn HistoryStore> = Arc::new(
            SqliteStore::open(SqliteConfig::new(dir.path().join("history.db")))
                .await
                .expect("open store"),
        );
        let started = Instant::now();
        let body =
            "lorem ipsum dolor sit amet, consectetur adipiscing elit ".repeat(4)[..200].to_string();
        // Published in order, up to 512 acks outstanding; records come back with their sequences.
        let mut records: Vec<StoredRecord> = futures::stream::iter(0..MESSAGES)
            .map(|i| {
                let msg = StoredMessage {
                    via: None,
                    id: format!("0190a1b2-c3d4-7e5f-8a9b-{i:012}"),
                    conv: conv(i % CONVS),
                    sender: UserId::new(format!("user-{}", i % 97)).expect("valid user"),
                    client_id: format!("k{i}"),
                    ts: 1_700_000_000_000 + i,
                    body: body.clone(),
                };
                let fabric = fabric.clone();
                async move {
                    let payload = serde_json::to_vec(&msg).expect("json");
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(MSG_ID_HEADER, msg.dedupe_id().as_str());
                    let subject = fabric.settings.partitions.msg_subject(&msg.conv);
                    let ack = fabric
                        .js
                        .publish_with_headers(subject, headers, payload.into())
                        .await
                        .expect("publish")
                        .await
                        .expect("puback");
                    StoredRecord {
                        seq: ack.sequence,
                        msg,
                    }
                }
            })
            .buffered(512)
            .collect()
            .await;
        records.sort_by_key(|r| r.seq);
        let last_seq = records.last().map_or(0, |r| r.seq);
        let watermark = records[(MESSAGES - ABOVE_WATERMARK) as usize - 1].seq;
        let published = started.elapsed();
        // The store holds everything (as a persister that has not yet reported its newest
        // watermark would), but answers only up to the watermark.
        for batch in records.chunks(256) {
            store.write_batch(batch, None).await.expect("write");
        }
        store
            .write_batch(
                &[],
                Some(Watermark {
                    partition: 0,
                    seq: watermark,
                }),
            )
            .await
            .expect("watermark");
        eprintln!(
            "fixture: {MESSAGES} messages in {CONVS} conversations; published in {:.1?}, \
             stored in {:.1?}; watermark {watermark} of {last_seq}",
            published,
            started.elapsed() - published
        );
        Self {
            _server: server,
            _dir: dir,
            store,
            fabric,
            last_seq,
            watermark,
        }
    }

    fn history(&self, cache_bytes: u64) -> History {
        History::new(
            Arc::clone(&self.store),
            self.fabric.clone(),
            cache_bytes,
            Default::default(),
        )
    }

    /// A random conversation and a `before` cursor with at least a page of stored messages below
    /// it and none above the watermark.
    fn cold_key(&self, rng: &mut fastrand::Rng) -> (ConvId, u64) {
        let before = rng.u64(self.last_seq / 2..=self.watermark);
        (conv(rng.u64(0..CONVS)), before)
    }
}

/// Times `SAMPLES` calls of `call(i)` and prints the percentiles.
async fn percentiles<F, Fut>(name: &str, mut call: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut took = Vec::with_capacity(SAMPLES);
    let mut messages = 0;
    for i in 0..SAMPLES {
        let t = Instant::now();
        messages += call(i).await;
        took.push(t.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<24} n={SAMPLES} p50={:.3} ms p90={:.3} ms p99={:.3} ms max={:.3} ms \
         (avg {:.1} msgs/page)",
        ms(at(0.50)),
        ms(at(0.90)),
        ms(at(0.99)),
        ms(*took.last().expect("samples")),
        messages as f64 / SAMPLES as f64
    );
}

fn report_percentiles(rt: &Runtime, fx: &Fixture) {
    let cached = fx.history(64 << 20);
    let uncached = fx.history(0);
    let hot = conv(7);
    let hot_before = fx.watermark - 1000;
    rt.block_on(async {
        percentiles("history_page/cached", |_| async {
            let page = cached.page(&hot, Some(hot_before), None, LIMIT).await;
            page.expect("page").len()
        })
        .await;
        let mut rng = fastrand::Rng::with_seed(1);
        percentiles("history_page/uncached", |_| {
            let (c, before) = fx.cold_key(&mut rng);
            let uncached = &uncached;
            async move {
                let page = uncached.page(&c, Some(before), None, LIMIT).await;
                page.expect("page").len()
            }
        })
        .await;
        let mut rng = fastrand::Rng::with_seed(2);
        percentiles("history_page/above_wm", |_| {
            let c = conv(rng.u64(0..CONVS));
            let uncached = &uncached;
            async move {
                let page = uncached.page(&c, None, None, LIMIT).await;
                page.expect("page").len()
            }
        })
        .await;
    });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "loadavg {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn criterion_benches(c: &mut Criterion, rt: &Runtime, fx: &Fixture) {
    let cached = fx.history(64 << 20);
    let uncached = fx.history(0);
    let hot = conv(7);
    let hot_before = fx.watermark - 1000;
    let mut group = c.benchmark_group("history_page");
    group.bench_function("cached", |b| {
        b.to_async(rt).iter(|| async {
            cached
                .page(&hot, Some(hot_before), None, LIMIT)
                .await
                .expect("page")
        })
    });
    let mut rng = fastrand::Rng::with_seed(3);
    group.bench_function("uncached", |b| {
        b.to_async(rt).iter(|| {
            let (c, before) = fx.cold_key(&mut rng);
            let uncached = &uncached;
            async move {
                uncached
                    .page(&c, Some(before), None, LIMIT)
                    .await
                    .expect("page")
            }
        })
    });
    group.bench_function("above_watermark", |b| {
        b.to_async(rt).iter(|| {
            let c = conv(rng.u64(0..CONVS));
            let uncached = &uncached;
            async move { uncached.page(&c, None, None, LIMIT).await.expect("page") }
        })
    });
    group.finish();
}

fn main() {
    let rt = Runtime::new().expect("runtime");
    let fx = rt.block_on(Fixture::new());
    report_percentiles(&rt, &fx);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    criterion_benches(&mut c, &rt, &fx);
    c.final_summary();
}
