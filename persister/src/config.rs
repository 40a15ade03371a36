//! Command-line flags of `chatfabric persister`, and opening the configured store.
//!
//! The store flags ([`StoreArgs`]) are a separate group so the gateway can flatten the same group
//! into its own flags and open the same store for history reads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::drain::DrainConfig;
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

/// Flags of `chatfabric persister`.
#[derive(Debug, Clone, clap::Args)]
pub struct PersisterArgs {
    /// Where history goes.
    #[command(flatten)]
    pub store: StoreArgs,

    /// Most messages fetched and written per batch.
    #[arg(long, env = "CHATFABRIC_PERSISTER_BATCH_SIZE", default_value_t = 256)]
    pub batch_size: usize,

    /// Longest a fetch waits for a batch to fill, in ms (also the longest wait before shutdown).
    #[arg(
        long,
        env = "CHATFABRIC_PERSISTER_BATCH_WAIT_MS",
        default_value_t = 100
    )]
    pub batch_wait_ms: u64,

    /// Durable consumer name, shared by every persister of a deployment.
    #[arg(
        long,
        env = "CHATFABRIC_PERSISTER_DURABLE",
        default_value = "persister"
    )]
    pub durable: String,

    /// Seconds JetStream waits for a persister's ack before redelivering: after a persister dies,
    /// what it had fetched is stored by another (or its restart) this much later.
    #[arg(long, env = "CHATFABRIC_PERSISTER_ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
}

impl PersisterArgs {
    /// The drain settings these flags describe (metrics fresh; register them before running).
    pub fn drain_config(&self) -> DrainConfig {
        DrainConfig {
            durable: self.durable.clone(),
            max_batch: self.batch_size.max(1),
            max_wait: Duration::from_millis(self.batch_wait_ms.max(1)),
            ack_wait: Duration::from_secs(self.ack_wait_secs.max(1)),
            ..DrainConfig::default()
        }
    }
}

/// Opens the configured history store.
pub async fn open_store(args: &StoreArgs) -> Result<Arc<dyn HistoryStore>, StoreError> {
    Ok(match args.kind {
        StoreKind::Sqlite => Arc::new(SqliteStore::open(args.sqlite_config()).await?),
        StoreKind::Scylla => Arc::new(ScyllaStore::connect(args.scylla_config()).await?),
    })
}

/// Opens the configured history store for reads ([`HistoryStore::page`] and
/// [`HistoryStore::watermark`]) only, as a gateway needs it. SQLite: read connections without the
/// writer thread and the checkpointer ([`SqliteStore::open_for_reads`]), so gateways sharing the
/// file with a persister never take its write lock; writes fail with
/// [`StoreError::ReadOnly`]. ScyllaDB: the same session as [`open_store`] (reads and writes
/// share nothing a reader could avoid).
pub async fn open_store_for_reads(args: &StoreArgs) -> Result<Arc<dyn HistoryStore>, StoreError> {
    Ok(match args.kind {
        StoreKind::Sqlite => Arc::new(SqliteStore::open_for_reads(args.sqlite_config()).await?),
        StoreKind::Scylla => Arc::new(ScyllaStore::connect(args.scylla_config()).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PersisterArgs,
    }

    #[test]
    fn defaults_and_lists_parse() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.args.store.kind, StoreKind::Sqlite);
        assert_eq!(cli.args.drain_config().max_batch, 256);
        let cli = Cli::try_parse_from([
            "x",
            "--store",
            "scylla",
            "--scylla-uri",
            "a:9042,b:9042",
            "--scylla-datacenter",
            "dc1",
            "--scylla-replication-factor",
            "3",
            "--scylla-consistency",
            "quorum",
            "--batch-wait-ms",
            "5",
        ])
        .unwrap();
        let scylla = cli.args.store.scylla_config();
        assert_eq!(scylla.nodes, vec!["a:9042", "b:9042"]);
        assert_eq!(
            scylla.replication,
            Replication::NetworkTopology {
                datacenters: vec![("dc1".into(), 3)]
            }
        );
        assert_eq!(cli.args.drain_config().max_wait, Duration::from_millis(5));
    }

    #[tokio::test]
    async fn opens_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/history.db");
        let cli = Cli::try_parse_from(["x", "--sqlite-path", path.to_str().unwrap()]).unwrap();
        let store = open_store(&cli.args.store).await.unwrap();
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
        // The reader may come first: it creates the file.
        let reader = open_store_for_reads(&cli.args.store).await.unwrap();
        let writer = open_store(&cli.args.store).await.unwrap();
        let conv = ConvId::new("c1").unwrap();
        let record = StoredRecord {
            seq: 7,
            msg: StoredMessage {
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
}
