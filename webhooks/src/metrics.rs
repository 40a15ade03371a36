//! The webhook role's Prometheus metrics (`chatfabric_webhooks_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::event::EventKind;

/// Labels of per-event-type series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `message.offline`, `member.added`, `member.removed`.
    pub kind: &'static str,
}

/// Labels of the dead-letter counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLabel {
    /// The event type.
    pub kind: &'static str,
    /// `failed` (every attempt failed) or `overflow` (the URL's queue was full).
    pub reason: &'static str,
}

/// Labels of per-consumer series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    /// The stream followed (`CHAT_MSGS_<n>`, `KV_CHAT_CONVS`).
    pub stream: String,
}

/// Every metric of the role. Clones share the series.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Events a receiver answered 2xx to (one per URL).
    pub sent: Family<KindLabel, Counter>,
    /// Attempts that failed (non-2xx, timeout, connection error).
    pub failed: Family<KindLabel, Counter>,
    /// Retries scheduled after a failed attempt.
    pub retried: Family<KindLabel, Counter>,
    /// Events moved to the dead-letter stream (one per URL).
    pub dead_lettered: Family<DeadLabel, Counter>,
    /// Messages not yet delivered to this role's consumer (num_pending).
    pub lag: Family<StreamLabel, Gauge>,
    /// Messages delivered to the role and not yet acked (num_ack_pending).
    pub ack_pending: Family<StreamLabel, Gauge>,
    /// Events queued or in retry for a URL, all URLs together.
    pub queued: Gauge,
    /// Messages held by this process until their events are delivered or dead-lettered.
    pub held: Gauge,
    /// Seconds from an event's first attempt to its 2xx.
    pub delivery_seconds: Histogram,
    /// Messages skipped because they were not valid stored messages.
    pub skipped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            sent: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            lag: Family::default(),
            ack_pending: Family::default(),
            queued: Gauge::default(),
            held: Gauge::default(),
            delivery_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 18)),
            skipped: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every series under `chatfabric_webhooks`, each kind at 0.
    pub fn register(&self, registry: &mut Registry) {
        for kind in EventKind::ALL.map(EventKind::as_str) {
            let label = KindLabel { kind };
            for f in [&self.sent, &self.failed, &self.retried] {
                let _ = f.get_or_create(&label);
            }
            for reason in ["failed", "overflow"] {
                let _ = self
                    .dead_lettered
                    .get_or_create(&DeadLabel { kind, reason });
            }
        }
        let r = registry.sub_registry_with_prefix("chatfabric_webhooks");
        chatfabric_nats::register_metrics!(r;
            "sent", "Events delivered (2xx), per URL", self.sent;
            "failed", "Delivery attempts that failed", self.failed;
            "retried", "Retries scheduled after a failed attempt", self.retried;
            "dead_lettered", "Events moved to the CHAT_WEBHOOKS_DEAD stream, per URL", self.dead_lettered;
            "lag_messages", "Messages not yet delivered to the webhook consumer (num_pending)", self.lag;
            "ack_pending_messages", "Messages the role holds until their events are done (num_ack_pending)", self.ack_pending;
            "queued_events", "Events queued or in retry", self.queued;
            "held_messages", "Messages held until their events are delivered or dead-lettered", self.held;
            "delivery_seconds", "From an event's first attempt to its 2xx", self.delivery_seconds;
            "skipped_messages", "Stored messages that could not be parsed (the persister dead-letters them)", self.skipped;
        );
    }
}
