//! SQLite history store: `write_batch` throughput and `page` latency.
//!
//! `cargo bench -p chatfabric-storage --bench store -- --measurement-time 5`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatfabric_nats::wire::StoredMessage;
use chatfabric_nats::{ConvId, UserId};
use chatfabric_storage::{
    HistoryStore, PageQuery, SqliteConfig, SqliteStore, StoredRecord, Watermark,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::runtime::Runtime;

const BATCH: usize = 256;
const CONVS: u64 = 100;

fn record(seq: u64) -> StoredRecord {
    let conv = format!("conv-{}", seq % CONVS);
    StoredRecord {
        seq,
        msg: StoredMessage {
            via: None,
            id: format!("0190a1b2-c3d4-7e5f-8a9b-{seq:012}"),
            conv: ConvId::new(conv).expect("valid conv"),
            sender: UserId::new(format!("user-{}", seq % 1000)).expect("valid user"),
            client_id: format!("client-{seq}"),
            ts: 1_700_000_000_000 + seq,
            body: "lorem ipsum dolor sit amet, consectetur adipiscing elit ".repeat(4)[..200]
                .to_string(),
        },
    }
}

/// Batches of fresh sequences (rewrites would be ignored and measure nothing).
struct Sequences(AtomicU64);

impl Sequences {
    fn batch(&self) -> Vec<StoredRecord> {
        let start = self.0.fetch_add(BATCH as u64, Ordering::Relaxed);
        (start..start + BATCH as u64).map(record).collect()
    }
}

fn open(rt: &Runtime, dir: &tempfile::TempDir) -> Arc<dyn HistoryStore> {
    let config = SqliteConfig::new(dir.path().join("bench.db"));
    Arc::new(rt.block_on(SqliteStore::open(config)).expect("open store"))
}

fn writes(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&rt, &dir);
    let seqs = Arc::new(Sequences(AtomicU64::new(1)));

    let mut group = c.benchmark_group("sqlite_write_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("256_msgs_one_writer", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (store, seqs) = (store.clone(), seqs.clone());
            async move {
                let batches: Vec<_> = (0..iters).map(|_| seqs.batch()).collect();
                let started = Instant::now();
                for (i, batch) in batches.iter().enumerate() {
                    let mark = Watermark {
                        partition: 0,
                        seq: i as u64,
                    };
                    store.write_batch(batch, Some(mark)).await.expect("write");
                }
                started.elapsed()
            }
        })
    });
    // Four partitions writing at once: the writer thread folds their batches into one commit.
    group.throughput(Throughput::Elements(4 * BATCH as u64));
    group.bench_function("256_msgs_x4_partitions", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (store, seqs) = (store.clone(), seqs.clone());
            async move {
                let batches: Vec<Vec<_>> = (0..iters)
                    .map(|_| (0..4).map(|_| seqs.batch()).collect())
                    .collect();
                let started = Instant::now();
                for round in &batches {
                    futures::future::try_join_all(round.iter().map(|b| store.write_batch(b, None)))
                        .await
                        .expect("write");
                }
                started.elapsed()
            }
        })
    });
    group.finish();
}

fn pages(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&rt, &dir);
    let seqs = Sequences(AtomicU64::new(1));
    rt.block_on(async {
        for _ in 0..(200_000 / BATCH) {
            store
                .write_batch(&seqs.batch(), None)
                .await
                .expect("preload");
        }
    });
    let conv = ConvId::new("conv-7").expect("valid conv");

    let mut group = c.benchmark_group("sqlite_page");
    group.bench_function("latest_50", |b| {
        b.to_async(&rt).iter(|| async {
            store
                .page(&conv, PageQuery::latest(50))
                .await
                .expect("page")
        })
    });
    group.bench_function("before_mid_50", |b| {
        b.to_async(&rt).iter(|| async {
            store
                .page(&conv, PageQuery::before(100_000, 50))
                .await
                .expect("page")
        })
    });
    group.bench_function("after_mid_50", |b| {
        b.to_async(&rt).iter(|| async {
            store
                .page(&conv, PageQuery::after(100_000, 50))
                .await
                .expect("page")
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = writes, pages
}
criterion_main!(benches);
