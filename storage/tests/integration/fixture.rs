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

/// The ScyllaDB settings of a fresh keyspace for `test`, on the nodes `SCYLLA_URI` names.
pub(crate) fn scylla_config(test: &str) -> ScyllaConfig {
    let uri = std::env::var("SCYLLA_URI")
        .ok()
        .filter(|u| !u.is_empty())
        .expect("SCYLLA_URI names the ScyllaDB nodes (it was set when the tests were built)");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut keyspace = format!("cf_{}_{nanos}_{test}", std::process::id());
    keyspace.truncate(48);
    ScyllaConfig {
        keyspace,
        ..ScyllaConfig::new(uri.split(',').map(str::to_string).collect())
    }
}

/// A ScyllaDB store (as its writer) in a fresh keyspace.
pub(crate) async fn scylla_store(test: &str) -> Arc<dyn HistoryStore> {
    Arc::new(ScyllaStore::connect(scylla_config(test)).await.unwrap())
}
