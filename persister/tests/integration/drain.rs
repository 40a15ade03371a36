//! The drain against a real nats-server: exactly-once storage, dead letters, sharing, restarts.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use async_trait::async_trait;
use chatfabric_nats::ConvId;
use chatfabric_persister::drain::poison::{DEAD_REASON_HEADER, DEAD_SEQUENCE_HEADER};
use chatfabric_persister::metrics::PartitionLabel;
use chatfabric_persister::DrainConfig;
use chatfabric_storage::{HistoryStore, PageQuery, StoreError, StoredRecord, Watermark};
use futures::StreamExt;

use crate::fixture::{all_of, NatsFixture, RunningDrain, SqliteFixture};

const CONVS: [&str; 4] = ["general", "random", "d-ab", "ops"];

/// Publishes `n` messages round-robin over [`CONVS`], numbered from `from`; returns the last seq.
async fn publish_many(nats: &NatsFixture, from: u64, n: u64) -> u64 {
    let mut last = 0;
    for i in from..from + n {
        last = nats.publish(CONVS[(i % 4) as usize], i).await;
    }
    last
}

/// Asserts the store holds messages `0..n` exactly once, each in its conversation.
async fn assert_stored_once(store: &dyn HistoryStore, n: u64) {
    let mut seen = HashSet::new();
    for conv in CONVS {
        for r in all_of(store, conv).await {
            assert_eq!(r.msg.conv.as_str(), conv);
            assert!(seen.insert(r.msg.id.clone()), "{} stored twice", r.msg.id);
        }
    }
    let expected: HashSet<_> = (0..n)
        .map(|i| format!("{}-{i}", CONVS[(i % 4) as usize]))
        .collect();
    assert_eq!(seen, expected);
}

fn config(max_batch: usize) -> DrainConfig {
    DrainConfig {
        max_batch,
        max_wait: Duration::from_millis(50),
        watermark_interval: Duration::from_millis(20),
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..Default::default()
    }
}

#[tokio::test]
async fn drains_every_message_exactly_once() {
    let nats = NatsFixture::start().await;
    let db = SqliteFixture::open().await;
    let last = publish_many(&nats, 0, 2000).await;
    let drain = RunningDrain::spawn(nats.fabric.clone(), db.store.clone(), config(256));
    nats.await_watermark(0, last).await;
    assert_stored_once(&*db.store, 2000).await;
    assert_eq!(db.store.watermark(0).await.unwrap(), last);
    assert!(drain.stored() >= 2000);
    drain.stop().await;
}

#[tokio::test]
async fn poison_is_dead_lettered_and_the_drain_goes_on() {
    let nats = NatsFixture::start().await;
    let db = SqliteFixture::open().await;
    let mut dead = nats.admin.client.subscribe("chat.dead.>").await.unwrap();
    nats.admin.client.flush().await.unwrap();

    let good = nats.publish("general", 1).await;
    let not_json = nats
        .publish_raw("chat.msg.0.general", b"{oops".to_vec())
        .await;
    let wrong_conv = serde_json::to_vec(&crate::fixture::message("random", 2)).unwrap();
    let mismatch = nats.publish_raw("chat.msg.0.general", wrong_conv).await;
    let mut big = crate::fixture::message("general", 3);
    big.body = "y".repeat(4096);
    let oversized = nats
        .publish_raw("chat.msg.0.general", serde_json::to_vec(&big).unwrap())
        .await;
    let last = nats.publish("general", 4).await;

    let config = DrainConfig {
        max_message_bytes: 1024,
        ..config(2)
    };
    let drain = RunningDrain::spawn(nats.fabric.clone(), db.store.clone(), config);
    nats.await_watermark(0, last).await;

    let stored: Vec<u64> = all_of(&*db.store, "general")
        .await
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(
        stored,
        vec![good, last],
        "good messages on both sides of the poison are stored"
    );

    let mut reasons = Vec::new();
    for _ in 0..3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .expect("dead letter arrives")
            .unwrap();
        let headers = msg.headers.expect("dead letter has headers");
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        let seq: u64 = header(DEAD_SEQUENCE_HEADER).unwrap().parse().unwrap();
        reasons.push((seq, header(DEAD_REASON_HEADER).unwrap()));
    }
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            (not_json, "invalid_json".to_string()),
            (mismatch, "conv_mismatch".to_string()),
            (oversized, "oversized".to_string()),
        ]
    );
    let dead_count: u64 = ["invalid_json", "conv_mismatch", "oversized"]
        .iter()
        .map(|reason| {
            drain
                .metrics
                .dead_letters
                .get_or_create(&chatfabric_persister::metrics::DeadLetterLabel {
                    partition: 0,
                    reason,
                })
                .get()
        })
        .sum();
    assert_eq!(dead_count, 3);
    let dead_stream = nats.fabric.js.get_stream("CHAT_DEAD").await.unwrap();
    assert_eq!(dead_stream.cached_info().state.messages, 3);
    drain.stop().await;
}

#[tokio::test]
async fn two_drains_share_the_load_without_duplicates() {
    let nats = NatsFixture::start().await;
    let db = SqliteFixture::open().await;
    let other_fabric = NatsFixture::connect(&nats.server).await;
    // Pulls that wait a second, so that both are seen waiting at once: with 50 ms ones, CI's load
    // once kept them from overlapping for 10 s.
    let patient = DrainConfig {
        max_wait: Duration::from_secs(1),
        ..config(16)
    };
    let a = RunningDrain::spawn(nats.fabric.clone(), db.store.clone(), patient.clone());
    let b = RunningDrain::spawn(other_fabric, db.reopen().await, patient);
    // Both processes must be pulling before the messages arrive, or one may take them all.
    await_waiting_pulls(&nats, 2).await;

    let last = publish_many(&nats, 0, 3000).await;
    nats.await_watermark(0, last).await;
    assert_stored_once(&*db.store, 3000).await;
    let (sa, sb) = (a.stored(), b.stored());
    assert!(sa > 0 && sb > 0, "both drains stored some ({sa} + {sb})");
    assert!(sa + sb >= 3000);
    a.stop().await;
    b.stop().await;
}

/// Waits until the shared consumer has `n` pull requests waiting (bounded by a deadline).
async fn await_waiting_pulls(nats: &NatsFixture, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = nats.fabric.streams[0]
            .get_consumer::<consumer::pull::Config>("persister")
            .await
        {
            if c.info().await.map(|i| i.num_waiting >= n).unwrap_or(false) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} pullers never waited"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn stopped_mid_way_and_restarted_stores_everything_once() {
    let nats = NatsFixture::start().await;
    let db = SqliteFixture::open().await;
    let mut last = publish_many(&nats, 0, 3000).await;
    let first = RunningDrain::spawn(nats.fabric.clone(), db.store.clone(), config(32));
    nats.await_watermark(0, 500).await;
    first.stop().await;
    let before_restart = db.store.watermark(0).await.unwrap();
    assert!(before_restart >= 500);

    last = last.max(publish_many(&nats, 3000, 1000).await);
    let second = RunningDrain::spawn(nats.fabric.clone(), db.reopen().await, config(256));
    nats.await_watermark(0, last).await;
    assert_stored_once(&*db.store, 4000).await;
    second.stop().await;
}

/// Fails the first `failures` writes, then behaves like the wrapped store.
struct FlakyStore {
    inner: Arc<dyn HistoryStore>,
    failures: AtomicUsize,
}

#[async_trait]
impl HistoryStore for FlakyStore {
    async fn write_batch(
        &self,
        records: &[StoredRecord],
        watermark: Option<Watermark>,
    ) -> Result<(), StoreError> {
        let left = self.failures.load(Ordering::SeqCst);
        if !records.is_empty() && left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::WorkerGone("flaky test store"));
        }
        self.inner.write_batch(records, watermark).await
    }

    async fn page(&self, conv: &ConvId, query: PageQuery) -> Result<Vec<StoredRecord>, StoreError> {
        self.inner.page(conv, query).await
    }

    async fn watermark(&self, partition: u16) -> Result<u64, StoreError> {
        self.inner.watermark(partition).await
    }
}

#[tokio::test]
async fn failed_writes_are_retried_and_nothing_is_lost() {
    let nats = NatsFixture::start().await;
    let db = SqliteFixture::open().await;
    let flaky = Arc::new(FlakyStore {
        inner: db.store.clone(),
        failures: AtomicUsize::new(3),
    });
    let last = publish_many(&nats, 0, 500).await;
    let drain = RunningDrain::spawn(nats.fabric.clone(), flaky, config(64));
    nats.await_watermark(0, last).await;
    assert_stored_once(&*db.store, 500).await;
    let label = PartitionLabel { partition: 0 };
    assert_eq!(drain.metrics.write_errors.get_or_create(&label).get(), 3);
    assert!(drain.metrics.redeliveries.get_or_create(&label).get() > 0);
    drain.stop().await;
}

/// Polls `unstored_messages{partition="0"}` as `/metrics` shows it until it equals `want`.
async fn await_unstored(metrics: &chatfabric_persister::metrics::Metrics, want: i64) {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let series = format!("chatfabric_persister_unstored_messages{{partition=\"0\"}} {want}\n");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        if text.contains(&series) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{}` within 10 s in:\n{text}",
            series.trim()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unstored_counts_what_the_store_has_not_committed() {
    let nats = NatsFixture::start().await;
    let db = SqliteFixture::open().await;
    // Every write fails until the store is let through: delivered but unacked messages count.
    let flaky = Arc::new(FlakyStore {
        inner: db.store.clone(),
        failures: AtomicUsize::new(usize::MAX),
    });
    let last = publish_many(&nats, 0, 100).await;
    let drain = RunningDrain::spawn(nats.fabric.clone(), flaky.clone(), config(64));
    await_unstored(&drain.metrics, 100).await;
    flaky.failures.store(0, Ordering::SeqCst);
    nats.await_watermark(0, last).await;
    await_unstored(&drain.metrics, 0).await;
    drain.stop().await;
}
