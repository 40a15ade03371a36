//! Command-line flags that say where history is stored ([`StoreArgs`]), and opening that store as
//! its writer ([`open_store`]) or as a reader ([`open_store_for_reads`]).
//!
//! The flags are one group so the persister (the writer) and the gateway (a reader) flatten the
//! same group into their own flags and open the same store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::pending::PendingSchema;
use crate::scylla::cql::Replication;
use crate::scylla::{ScyllaConfig, ScyllaStore};
use crate::sqlite::{SqliteConfig, SqliteStore, Synchronous};
use crate::store::{HistoryStore, StoreError};

/// Which history backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// One SQLite file on local disk: single-node deployments.
    Sqlite,
    /// A ScyllaDB (or Cassandra) cluster.
    Scylla,
}

/// Consistency level of ScyllaDB reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsistencyArg {
    /// One replica.
    One,
    /// A majority of all replicas.
    Quorum,
    /// A majority of the replicas in the local datacenter.
    LocalQuorum,
    /// Every replica.
    All,
}

impl From<ConsistencyArg> for scylla::statement::Consistency {
    fn from(c: ConsistencyArg) -> Self {
        use scylla::statement::Consistency;
        match c {
            ConsistencyArg::One => Consistency::One,
            ConsistencyArg::Quorum => Consistency::Quorum,
            ConsistencyArg::LocalQuorum => Consistency::LocalQuorum,
            ConsistencyArg::All => Consistency::All,
        }
    }
}

/// Where history is stored; shared by the persister (writes) and the gateway (reads).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// History backend.
    #[arg(long = "store", env = "CHATFABRIC_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    pub kind: StoreKind,

    /// SQLite database file (created with its directory if missing).
    #[arg(
        long,
        env = "CHATFABRIC_SQLITE_PATH",
        default_value = "./data/history.db"
    )]
    pub sqlite_path: PathBuf,

    /// SQLite commit durability: `normal` survives the process dying (an OS crash may lose the
    /// last commits); `full` fsyncs every commit and survives OS crashes too, at a lower rate.
    #[arg(long, env = "CHATFABRIC_SQLITE_SYNCHRONOUS", value_enum, default_value_t = Synchronous::Normal)]
    pub sqlite_synchronous: Synchronous,

    /// ScyllaDB contact points, `host:port`, comma separated.
    #[arg(
        long,
        env = "CHATFABRIC_SCYLLA_URI",
        value_delimiter = ',',
        default_value = "127.0.0.1:9042"
    )]
    pub scylla_uri: Vec<String>,

    /// ScyllaDB keyspace (created if missing).
    #[arg(long, env = "CHATFABRIC_SCYLLA_KEYSPACE", default_value = "chatfabric")]
    pub scylla_keyspace: String,

    /// Replicas per row when the keyspace is created (per datacenter with --scylla-datacenter).
    #[arg(
        long,
        env = "CHATFABRIC_SCYLLA_REPLICATION_FACTOR",
        default_value_t = 1
    )]
    pub scylla_replication_factor: u32,

    /// Datacenters for NetworkTopologyStrategy, comma separated; empty uses SimpleStrategy.
    #[arg(long, env = "CHATFABRIC_SCYLLA_DATACENTER", value_delimiter = ',')]
    pub scylla_datacenter: Vec<String>,

    /// Consistency of every ScyllaDB read and write.
    #[arg(long, env = "CHATFABRIC_SCYLLA_CONSISTENCY", value_enum, default_value_t = ConsistencyArg::LocalQuorum)]
    pub scylla_consistency: ConsistencyArg,
}

impl StoreArgs {
    /// The SQLite settings these flags describe.
    pub fn sqlite_config(&self) -> SqliteConfig {
        SqliteConfig {
            synchronous: self.sqlite_synchronous,
            ..SqliteConfig::new(&self.sqlite_path)
        }
    }

    /// The ScyllaDB settings these flags describe.
    pub fn scylla_config(&self) -> ScyllaConfig {
        let factor = self.scylla_replication_factor;
        let replication = if self.scylla_datacenter.is_empty() {
            Replication::Simple { factor }
        } else {
            Replication::NetworkTopology {
                datacenters: self
                    .scylla_datacenter
                    .iter()
                    .map(|dc| (dc.clone(), factor))
                    .collect(),
            }
        };
        ScyllaConfig {
            keyspace: self.scylla_keyspace.clone(),
            replication,
            consistency: self.scylla_consistency.into(),
            ..ScyllaConfig::new(self.scylla_uri.clone())
        }
    }
}

/// Opens the configured history store as its writer (the persister, and `chatfabric dev` for all
/// its roles): creates the schema if missing and migrates it to this build's version. Refuses a
/// store with a newer schema ([`StoreError::SchemaTooNew`]).
pub async fn open_store(args: &StoreArgs) -> Result<Arc<dyn HistoryStore>, StoreError> {
    Ok(match args.kind {
        StoreKind::Sqlite => Arc::new(SqliteStore::open(args.sqlite_config()).await?),
        StoreKind::Scylla => Arc::new(ScyllaStore::connect(args.scylla_config()).await?),
    })
}

/// How often a SQLite reader that found no schema looks again: a missing file costs one `stat`,
/// so on every read.
const RECHECK_SQLITE: Duration = Duration::ZERO;
/// How often a ScyllaDB reader that found no schema looks again: each look is a new session.
const RECHECK_SCYLLA: Duration = Duration::from_secs(1);

/// Opens the configured history store for reads ([`HistoryStore::page`] and
/// [`HistoryStore::watermark`]) only, as a gateway needs it; writes fail with
/// [`StoreError::ReadOnly`]. A reader never creates or migrates the schema (see
/// [`crate::schema`]).
///
/// - SQLite: read connections without the writer thread and the checkpointer
///   ([`SqliteStore::open_for_reads`]), so gateways sharing the file with a persister never take
///   its write lock. ScyllaDB: a session that only reads ([`ScyllaStore::connect_for_reads`]).
/// - No schema yet (the persister has not started): a [`PendingSchema`] store, empty until the
///   writer creates the schema, so a gateway may start first.
/// - A schema at another version: [`StoreError::SchemaOutdated`] (the writer of this version has
///   not migrated it yet; worth retrying) or [`StoreError::SchemaTooNew`] (refused).
pub async fn open_store_for_reads(args: &StoreArgs) -> Result<Arc<dyn HistoryStore>, StoreError> {
    let (kind, sqlite, scylla) = (args.kind, args.sqlite_config(), args.scylla_config());
    let open = move || open_reader(kind, sqlite.clone(), scylla.clone());
    match open().await {
        Err(StoreError::SchemaMissing { store }) => {
            tracing::info!(
                %store,
                "no history schema yet (the persister creates it); reading history from \
                 JetStream until it exists"
            );
            let recheck = match kind {
                StoreKind::Sqlite => RECHECK_SQLITE,
                StoreKind::Scylla => RECHECK_SCYLLA,
            };
            Ok(Arc::new(PendingSchema::new(open, recheck)))
        }
        opened => opened,
    }
}

/// One attempt to open the `kind` store for reads.
fn open_reader(
    kind: StoreKind,
    sqlite: SqliteConfig,
    scylla: ScyllaConfig,
) -> BoxFuture<'static, Result<Arc<dyn HistoryStore>, StoreError>> {
    Box::pin(async move {
        Ok(match kind {
            StoreKind::Sqlite => {
                Arc::new(SqliteStore::open_for_reads(sqlite).await?) as Arc<dyn HistoryStore>
            }
            StoreKind::Scylla => Arc::new(ScyllaStore::connect_for_reads(scylla).await?),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[tokio::test]
    async fn opens_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/history.db");
        let cli = Cli::try_parse_from(["x", "--sqlite-path", path.to_str().unwrap()]).unwrap();
        let store = open_store(&cli.store).await.unwrap();
        assert_eq!(store.watermark(0).await.unwrap(), 0);
        assert!(path.exists());
    }

    #[tokio::test]
    async fn reads_only_store_sees_the_writers_rows_and_refuses_writes() {
        use crate::store::{PageQuery, StoredRecord, Watermark};
        use chatfabric_nats::wire::StoredMessage;
        use chatfabric_nats::{ConvId, UserId};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let cli = Cli::try_parse_from(["x", "--sqlite-path", path.to_str().unwrap()]).unwrap();
        // The reader may come first: it reads as an empty store until the writer's schema exists.
        let reader = open_store_for_reads(&cli.store).await.unwrap();
        let writer = open_store(&cli.store).await.unwrap();
        let conv = ConvId::new("c1").unwrap();
        let record = StoredRecord {
            seq: 7,
            msg: StoredMessage {
                via: None,
                id: "id-7".into(),
                conv: conv.clone(),
                sender: UserId::new("alice").unwrap(),
                client_id: "k7".into(),
                ts: 1,
                body: "hi".into(),
            },
        };
        let mark = Watermark {
            partition: 0,
            seq: 7,
        };
        writer
            .write_batch(std::slice::from_ref(&record), Some(mark))
            .await
            .unwrap();
        assert_eq!(reader.watermark(0).await.unwrap(), 7);
        let page = reader.page(&conv, PageQuery::latest(10)).await.unwrap();
        assert_eq!(page, vec![record.clone()]);
        assert!(matches!(
            reader.write_batch(&[record], None).await,
            Err(StoreError::ReadOnly)
        ));
    }

    #[tokio::test]
    async fn a_reader_before_the_writer_creates_nothing_and_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/history.db");
        let cli = Cli::try_parse_from(["x", "--sqlite-path", path.to_str().unwrap()]).unwrap();
        let reader = open_store_for_reads(&cli.store).await.unwrap();
        assert_eq!(reader.watermark(3).await.unwrap(), 0);
        let conv = chatfabric_nats::ConvId::new("c1").unwrap();
        let page = reader.page(&conv, crate::PageQuery::latest(10)).await;
        assert!(page.unwrap().is_empty());
        assert!(!path.exists(), "only the writer creates the database");
    }

    #[tokio::test]
    async fn a_reader_refuses_a_schema_newer_than_it_knows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let cli = Cli::try_parse_from(["x", "--sqlite-path", path.to_str().unwrap()]).unwrap();
        drop(open_store(&cli.store).await.unwrap());
        let current = {
            let conn = rusqlite::Connection::open(&path).unwrap();
            let v: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            conn.pragma_update(None, "user_version", v + 1).unwrap();
            v
        };
        let err = match open_store_for_reads(&cli.store).await {
            Ok(_) => panic!("a reader opened a schema from the future"),
            Err(e) => e,
        };
        match &err {
            StoreError::SchemaTooNew {
                store,
                found,
                supported,
            } => {
                assert_eq!((*found, *supported), (current + 1, current));
                assert!(store.ends_with("history.db"), "{store}");
            }
            other => panic!("expected SchemaTooNew, got {other}"),
        }
        let text = err.to_string();
        assert!(text.contains(&format!("version {}", current + 1)), "{text}");
    }

    #[tokio::test]
    async fn a_reader_waits_for_the_writer_to_migrate_an_older_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let cli = Cli::try_parse_from(["x", "--sqlite-path", path.to_str().unwrap()]).unwrap();
        drop(open_store(&cli.store).await.unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        let current: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "user_version", current - 1)
            .unwrap();
        assert!(matches!(
            open_store_for_reads(&cli.store).await,
            Err(StoreError::SchemaOutdated { found, expected, .. })
                if found == current - 1 && expected == current
        ));
        conn.pragma_update(None, "user_version", current).unwrap();
        assert!(open_store_for_reads(&cli.store).await.is_ok());
    }
}
