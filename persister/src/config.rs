//! Command-line flags of `chatfabric persister`.
//!
//! Where history is stored is the storage crate's flag group ([`StoreArgs`]), flattened here; the
//! gateway flattens the same group to read the same store.

use std::time::Duration;

use chatfabric_storage::StoreArgs;

use crate::drain::DrainConfig;

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

#[cfg(test)]
mod tests {
    use super::*;
    use chatfabric_storage::{Replication, StoreKind};
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
}
