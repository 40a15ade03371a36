//! Shared set-up: a SQLite store in a temporary directory, a ScyllaDB store in a fresh keyspace.

use std::sync::Arc;

use chatfabric_storage::{HistoryStore, ScyllaConfig, ScyllaStore, SqliteConfig, SqliteStore};

/// A SQLite store in its own temporary directory, removed on drop.
pub(crate) struct SqliteFixture {
    pub(crate) store: Arc<dyn HistoryStore>,
    _dir: tempfile::TempDir,
}

impl SqliteFixture {
    pub(crate) async fn open() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = open_sqlite(&dir).await;
        Self { store, _dir: dir }
    }
}

async fn open_sqlite(dir: &tempfile::TempDir) -> Arc<dyn HistoryStore> {
    let config = SqliteConfig::new(dir.path().join("history.db"));
    Arc::new(SqliteStore::open(config).await.unwrap())
}

/// A ScyllaDB store in a fresh keyspace, or `None` when `SCYLLA_URI` is not set.
pub(crate) async fn scylla_store(test: &str) -> Option<Arc<dyn HistoryStore>> {
    let uri = std::env::var("SCYLLA_URI").ok().filter(|u| !u.is_empty())?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut keyspace = format!("cf_{}_{nanos}_{test}", std::process::id());
    keyspace.truncate(48);
    let config = ScyllaConfig {
        keyspace,
        ..ScyllaConfig::new(uri.split(',').map(str::to_string).collect())
    };
    Some(Arc::new(ScyllaStore::connect(config).await.unwrap()))
}
