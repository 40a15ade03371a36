//! The persister's Prometheus metrics. The binary registers them and serves `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::drain::poison::PoisonReason;

/// Labels of per-partition series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// The partition (stream `CHAT_MSGS_<partition>`).
    pub partition: u16,
}

/// Labels of the dead-letter counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabel {
    /// The partition the message came from.
    pub partition: u16,
    /// Why it was dead-lettered (`crate::drain::PoisonReason::as_str`).
    pub reason: &'static str,
}

/// Every metric the drain updates. Clones share the same series.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Messages in the stream not yet delivered to any persister (the consumer's `num_pending`).
    pub lag: Family<PartitionLabel, Gauge>,
    /// Messages in the stream not yet stored in history: undelivered plus delivered but not yet
    /// acked (`num_pending + num_ack_pending`; the persister acks after the store committed).
    pub unstored: Family<PartitionLabel, Gauge>,
    /// The watermark last stored per partition.
    pub watermark: Family<PartitionLabel, Gauge>,
    /// Messages per fetched batch.
    pub batch_size: Histogram,
    /// Seconds one `write_batch` took (successful or not).
    pub write_seconds: Histogram,
    /// Messages written to the store (including rewrites of redeliveries).
    pub stored: Family<PartitionLabel, Counter>,
    /// Failed `write_batch` calls; each is retried after a backoff.
    pub write_errors: Family<PartitionLabel, Counter>,
    /// Messages moved to the dead-letter stream, by reason.
    pub dead_letters: Family<DeadLetterLabel, Counter>,
    /// Messages delivered more than once (a persister died, timed out, or nak'd them).
    pub redeliveries: Family<PartitionLabel, Counter>,
    /// Acks (or ack flushes) that could not be sent; those messages will be redelivered and
    /// rewritten.
    pub ack_failures: Family<PartitionLabel, Counter>,
    /// Partition drains running (their consumer exists and they fetch): the persister is ready
    /// when all are.
    pub draining: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            lag: Family::default(),
            unstored: Family::default(),
            watermark: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            write_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            stored: Family::default(),
            write_errors: Family::default(),
            dead_letters: Family::default(),
            redeliveries: Family::default(),
            ack_failures: Family::default(),
            draining: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every series under the `chatfabric_persister` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("chatfabric_persister");
        chatfabric_nats::register_metrics!(r;
            "lag_messages", "Messages not yet delivered to a persister (consumer num_pending)", self.lag;
            "unstored_messages", "Messages in the stream not yet stored in history (num_pending + num_ack_pending)", self.unstored;
            "watermark_sequence", "Stream sequence at or below which the history store is complete", self.watermark;
            "batch_size_messages", "Messages per fetched batch", self.batch_size;
            "write_seconds", "Duration of one history store write", self.write_seconds;
            "stored_messages", "Messages written to the history store", self.stored;
            "write_errors", "Failed history store writes (retried)", self.write_errors;
            "dead_letters", "Messages moved to the dead-letter stream", self.dead_letters;
            "redeliveries", "Messages delivered more than once", self.redeliveries;
            "ack_failures", "Acks that could not be sent (the message is redelivered)", self.ack_failures;
            "draining_partitions", "Partition drains running", self.draining;
        );
    }

    /// Creates `partition`'s series at 0, so dashboards read 0 rather than "no data" before the
    /// first message, write error or dead letter.
    pub fn init_partition(&self, partition: u16) {
        let label = PartitionLabel { partition };
        for family in [&self.lag, &self.unstored, &self.watermark] {
            let _ = family.get_or_create(&label);
        }
        for family in [
            &self.stored,
            &self.write_errors,
            &self.redeliveries,
            &self.ack_failures,
        ] {
            let _ = family.get_or_create(&label);
        }
        for reason in PoisonReason::ALL {
            let _ = self.dead_letters.get_or_create(&DeadLetterLabel {
                partition,
                reason: reason.as_str(),
            });
        }
    }
}
