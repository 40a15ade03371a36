//! What the persister's rate examples share: their arguments, a fresh SQLite store, and the CPU
//! time this process used.

use std::sync::Arc;

use chatfabric_nats::wire::StoredMessage;
use chatfabric_nats::{ConvId, UserId};
use chatfabric_storage::{HistoryStore, SqliteConfig, SqliteStore};

/// Message number `i` of a run over `convs` conversations, with a 200-byte body.
pub fn message(i: u64, convs: u64) -> StoredMessage {
    StoredMessage {
        via: None,
        id: format!("0190a1b2-c3d4-7e5f-8a9b-{i:012}"),
        conv: ConvId::new(format!("conv-{}", i % convs)).expect("valid conv"),
        sender: UserId::new(format!("user-{}", i % 97)).expect("valid user"),
        client_id: format!("client-{i}"),
        ts: 1_700_000_000_000 + i,
        body: "lorem ipsum dolor sit amet, consectetur adipiscing elit ".repeat(4)[..200]
            .to_string(),
    }
}

/// The numeric command-line arguments, in order.
pub fn numbers() -> impl Iterator<Item = u64> {
    std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("arguments are numbers"))
}

/// An empty SQLite store in a fresh temporary directory (removed when the guard drops).
pub async fn temp_store(file: &str) -> (tempfile::TempDir, Arc<dyn HistoryStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join(file)))
        .await
        .expect("open the store");
    (dir, Arc::new(store))
}

/// User + system CPU seconds of this process, from /proc (Linux only; 0 elsewhere).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The 1-, 5- and 15-minute load averages, for the report line (a shared machine's caveat).
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
