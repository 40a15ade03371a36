//! Steady-state write rate of the SQLite store, for profiling and for machines too busy for
//! criterion's statistics: writes `TOTAL` fresh messages in 256-message batches from `WRITERS`
//! concurrent callers and prints messages per second of wall time and of process CPU time.
//!
//! `cargo run --release -p chatfabric-persister --example write_rate -- [TOTAL] [WRITERS] [CONVS]`
//!
//! CPU time is the steadier figure on a shared machine: other processes stretch wall time but
//! not the CPU this process burns per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chatfabric_storage::{StoredRecord, Watermark};

mod common;

const BATCH: u64 = 256;

fn record(seq: u64, convs: u64) -> StoredRecord {
    StoredRecord {
        seq,
        msg: common::message(seq, convs),
    }
}

#[tokio::main]
async fn main() {
    let mut args = common::numbers();
    let total = args.next().unwrap_or(400_000);
    let writers = args.next().unwrap_or(1).max(1);
    let convs = args.next().unwrap_or(100).max(1);
    let (_dir, store) = common::temp_store("rate.db").await;
    let next = Arc::new(AtomicU64::new(1));
    let (cpu0, wall0) = (common::cpu_seconds(), Instant::now());
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, next) = (Arc::clone(&store), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(BATCH, Ordering::Relaxed);
                    if start > total {
                        return;
                    }
                    let batch: Vec<_> = (start..start + BATCH).map(|s| record(s, convs)).collect();
                    let mark = Watermark {
                        partition: w as u16,
                        seq: start,
                    };
                    store.write_batch(&batch, Some(mark)).await.expect("write");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    let (wall, cpu) = (wall0.elapsed().as_secs_f64(), common::cpu_seconds() - cpu0);
    println!(
        "{total} msgs, {writers} writer(s), {convs} convs: {:.0} msg/s wall ({wall:.2} s), \
         {:.0} msg/s per CPU-second ({cpu:.2} s); loadavg {}",
        total as f64 / wall,
        total as f64 / cpu.max(1e-9),
        common::load_average()
    );
}
