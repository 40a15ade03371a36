//! The drain: JetStream partition streams -> [`HistoryStore`].
//!
//! # Guarantees
//!
//! - **Shared durable pull consumers.** Each partition stream gets one durable pull consumer named
//!   [`DrainConfig::durable`] (explicit acks, unlimited deliveries). Every persister process binds
//!   to the same consumer, so JetStream spreads batches over however many are running, and a
//!   process that dies leaves its unacked messages to be redelivered to the others after
//!   [`DrainConfig::ack_wait`].
//! - **Ack after commit.** A batch is acked only after [`HistoryStore::write_batch`] returned `Ok`.
//!   If the write fails, the batch is nak'd with a delay and the partition backs off; nothing is
//!   lost and nothing is acked early. Redeliveries rewrite rows, which the store ignores.
//! - **Poison never blocks.** Unparseable, mis-addressed or oversized messages are copied to the
//!   dead-letter stream ([`poison`]) and terminated.
//! - **Watermarks.** The consumer's ack floor is the highest stream sequence at or below which every
//!   message was acked by *some* persister, that is stored (or dead-lettered). The drain reads it
//!   from the server every [`DrainConfig::watermark_interval`], stores it with the next batch (same
//!   transaction in SQLite), and then publishes the stored value to the KV bucket
//!   [`WATERMARKS_BUCKET`] under `p<part>` as decimal ASCII. Readers may serve `seq <= watermark`
//!   from the store alone; the KV copy is for operators and dashboards and may briefly lag, but it
//!   is never ahead of the store.
//! - **Shutdown.** When the token is cancelled, each partition finishes its in-flight batch (a
//!   fetch waits at most [`DrainConfig::max_wait`]), acks it, stores a last watermark and returns.

mod consumer;
mod partition;
pub mod poison;

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use chatfabric_nats::provision::{bucket_config, ensure_bucket, ensure_stream};
use chatfabric_nats::{subject, Fabric};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use chatfabric_storage::HistoryStore;

pub use consumer::DrainConfig;
pub use partition::watermark_key;
pub use poison::PoisonReason;

pub use chatfabric_nats::subject::WATERMARKS_BUCKET;

/// Why the drain could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The dead-letter stream could not be created or updated.
    #[error(
        "creating the dead-letter stream CHAT_DEAD: {0} (is JetStream enabled, and does another \
         stream own chat.dead.>?)"
    )]
    DeadLetterStream(#[source] jetstream::context::CreateStreamError),
    /// The watermark bucket could not be created or updated.
    #[error("creating the watermark bucket: {0}")]
    WatermarkBucket(#[source] chatfabric_nats::ProvisionError),
    /// The durable consumer could not be created or updated.
    #[error(
        "creating consumer {durable} on {stream}: {source} (was the consumer created with \
         another config that cannot be changed, e.g. a push consumer of the same name?)"
    )]
    Consumer {
        /// The stream.
        stream: String,
        /// The consumer's name.
        durable: String,
        /// The server's answer.
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    /// A partition task panicked (a bug; see the log for the panic message).
    #[error("partition drain task panicked: {0}")]
    Panicked(String),
}

/// Creates (or updates) what the drain needs besides the message streams: the dead-letter stream
/// and the watermark bucket, returned. Idempotent; [`run`] calls it, and readers that want to watch
/// the watermarks before a persister started may call it too.
pub async fn prepare(fabric: &Fabric) -> Result<kv::Store, PersistError> {
    let replicas = fabric.settings.replicas;
    ensure_stream(&fabric.js, poison::dead_stream_config(replicas))
        .await
        .map_err(PersistError::DeadLetterStream)?;
    // Through the stream API: async-nats' KV creation does not parse nats-server 2.9's answers.
    let config = bucket_config(
        WATERMARKS_BUCKET,
        "chatfabric: per partition, the stream sequence stored in history",
        replicas,
    );
    ensure_bucket(&fabric.js, config)
        .await
        .map_err(PersistError::WatermarkBucket)
}

/// Drains every partition stream of `fabric` into `store` until `shutdown` is cancelled.
///
/// Creates (idempotently) the dead-letter stream, the watermark bucket and the durable consumers,
/// then runs one task per partition. Returns `Ok` after a graceful shutdown; errors only when
/// start-up fails or a task panics (store and fetch failures are retried, not returned).
pub async fn run(
    fabric: Fabric,
    store: Arc<dyn HistoryStore>,
    config: DrainConfig,
    shutdown: CancellationToken,
) -> Result<(), PersistError> {
    let watermarks = prepare(&fabric).await?;
    let config = Arc::new(config);
    // Stops the other partitions if one task dies, without cancelling the caller's token.
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    for part in 0..fabric.settings.partitions.count() {
        let stream = fabric.streams[usize::from(part)].clone();
        let consumer = stream
            .create_consumer(config.consumer_config())
            .await
            .map_err(|source| PersistError::Consumer {
                stream: subject::stream_name(part),
                durable: config.durable.clone(),
                source,
            })?;
        let drain = partition::PartitionDrain {
            part,
            stream,
            consumer,
            js: fabric.js.clone(),
            store: Arc::clone(&store),
            watermarks: watermarks.clone(),
            config: Arc::clone(&config),
            shutdown: stop.clone(),
            mark: partition::MarkState::default(),
        };
        let running = Running::new(&config.metrics.draining);
        tasks.spawn(async move {
            drain.run().await;
            drop(running);
        });
    }
    tracing::info!(
        partitions = fabric.settings.partitions.count(),
        durable = %config.durable,
        "persister draining"
    );
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            stop.cancel();
            if result.is_ok() {
                result = Err(PersistError::Panicked(e.to_string()));
            }
        }
    }
    result
}

/// Counts a partition drain in `draining_partitions` while it lives (a panic included).
struct Running(prometheus_client::metrics::gauge::Gauge);

impl Running {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}
