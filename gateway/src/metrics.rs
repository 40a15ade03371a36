//! Prometheus metrics of a gateway, served as text on `/metrics`.
//!
//! Hot-path handles (deliveries, acks) are resolved once at start-up so a delivery costs one atomic
//! add, never a label lookup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label naming a frame type, error code or close reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// The frame op, error code or close reason.
    pub kind: &'static str,
}

/// Every metric a gateway exports.
#[derive(Clone)]
pub struct Metrics {
    /// Open WebSocket connections (authenticated or not).
    pub connections: Gauge,
    /// Open server-sent event streams.
    pub sse_streams: Gauge,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Inbound frames by op (`invalid` for frames that did not decode).
    pub frames_in: Family<Kind, Counter>,
    /// Outbound frames by op.
    pub frames_out: Family<Kind, Counter>,
    /// `msg` frames handed to connections (one per delivery).
    pub deliveries: Counter,
    /// Sends acknowledged to clients.
    pub acks: Counter,
    /// Sends acknowledged as duplicates of an earlier send (retries).
    pub acks_duplicate: Counter,
    /// Publishes of a send repeated (same message id) after a lost or refused PubAck.
    pub publish_retries: Counter,
    /// `error` frames by code.
    pub errors: Family<Kind, Counter>,
    /// Connections closed by the gateway, by reason (`slow_consumer`, `flood`, `unauthorized`, ...).
    pub closes: Family<Kind, Counter>,
    /// Gaps in a conversation's live feed that were filled from JetStream.
    pub gap_fills: Counter,
    /// Server API requests that reached an endpoint with a valid key, by endpoint.
    pub server_api_requests: Family<Kind, Counter>,
    /// Messages fetched from JetStream to fill gaps or resume subscriptions.
    pub fetched: Counter,
    /// Conversations with local subscribers (one NATS subscription each).
    pub live_conversations: Gauge,
    /// Messages stored for NATS-direct publishers (bots, devices).
    pub ingest_accepted: Counter,
    /// NATS-direct requests refused, by error code (malformed, oversized, not a member, ...).
    pub ingest_rejected: Family<Kind, Counter>,
    /// Time from publish to PubAck, seconds.
    pub publish_latency: Histogram,
    /// Time to answer one history page (cache, store and JetStream), seconds.
    pub history_latency: Histogram,
    /// Ephemeral frames (presence, typing, read) handed to connections.
    pub ephemeral_deliveries: Counter,
    /// Ephemeral frames dropped because a connection's queue was full (the connection stays).
    pub ephemeral_dropped: Counter,
    /// Ephemeral events received from NATS that did not parse or named another conversation.
    pub ephemeral_invalid: Counter,
    /// Writes to the presence bucket (device keys and heartbeats).
    pub presence_writes: Counter,
    /// Presence bucket writes that failed.
    pub presence_write_errors: Counter,
    /// Times the presence service buried this live gateway and it re-asserted its users.
    pub presence_reasserts: Counter,
    /// Bytes queued in all connections' outboxes (each bounded by `--queue-bytes`).
    pub queued_bytes: Gauge,
    /// Bytes of history pages cached (bounded by `--history-cache-bytes`).
    pub history_cache_bytes: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under the `chatfabric_gateway` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            sse_streams: Gauge::default(),
            frames_in: Family::default(),
            frames_out: Family::default(),
            deliveries: Counter::default(),
            acks: Counter::default(),
            acks_duplicate: Counter::default(),
            publish_retries: Counter::default(),
            errors: Family::default(),
            closes: Family::default(),
            gap_fills: Counter::default(),
            server_api_requests: Family::default(),
            fetched: Counter::default(),
            live_conversations: Gauge::default(),
            ingest_accepted: Counter::default(),
            ingest_rejected: Family::default(),
            publish_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            history_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            ephemeral_deliveries: Counter::default(),
            ephemeral_dropped: Counter::default(),
            ephemeral_invalid: Counter::default(),
            presence_writes: Counter::default(),
            presence_write_errors: Counter::default(),
            presence_reasserts: Counter::default(),
            queued_bytes: Gauge::default(),
            history_cache_bytes: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("chatfabric_gateway");
        chatfabric_nats::register_metrics!(r;
            "connections", "Open WebSocket connections", m.connections;
            "connections_accepted", "Connections accepted", m.connections_total;
            "frames_in", "Inbound frames by op", m.frames_in;
            "frames_out", "Outbound frames by op (msg frames: see deliveries)", m.frames_out;
            "deliveries", "Message frames handed to connections", m.deliveries;
            "acks", "Sends acknowledged", m.acks;
            "publish_retries", "Sends published again with the same id after a lost or refused PubAck", m.publish_retries;
            "acks_duplicate", "Sends acknowledged as retries of a stored message", m.acks_duplicate;
            "errors", "Error frames by code", m.errors;
            "closes", "Connections closed by the gateway, by reason", m.closes;
            "server_api_requests", "Server API requests with a valid key, by endpoint", m.server_api_requests;
            "gap_fills", "Live feed gaps filled from JetStream", m.gap_fills;
            "fetched_messages", "Messages fetched from JetStream (gap fills, resumes)", m.fetched;
            "live_conversations", "Conversations with local subscribers", m.live_conversations;
            "ingest_accepted", "Messages stored for NATS-direct publishers", m.ingest_accepted;
            "ingest_rejected", "NATS-direct requests refused, by error code", m.ingest_rejected;
            "sse_streams", "Open server-sent event streams", m.sse_streams;
            "publish_latency_seconds", "Publish to PubAck latency", m.publish_latency;
            "history_page_seconds", "Time to answer one history page", m.history_latency;
            "ephemeral_deliveries", "Presence, typing and read frames handed to connections", m.ephemeral_deliveries;
            "ephemeral_dropped", "Presence, typing and read frames dropped for full queues", m.ephemeral_dropped;
            "ephemeral_invalid", "Ephemeral events from NATS that did not parse", m.ephemeral_invalid;
            "presence_writes", "Presence bucket writes (device keys, heartbeats)", m.presence_writes;
            "presence_write_errors", "Presence bucket writes that failed", m.presence_write_errors;
            "presence_reasserts", "Times this gateway was declared dead while alive and re-asserted its users", m.presence_reasserts;
        );
        // Reasons a dashboard charts exist from the start, so a rate over them reads 0, not
        // "no data", until the first close.
        for reason in Self::CHARTED_CLOSES {
            let _ = m.closes.get_or_create(&Kind { kind: reason });
        }
        chatfabric_nats::register_metrics!(r;
            "queued_bytes", "Bytes queued for clients in all outboxes", m.queued_bytes;
            "history_cache_bytes", "Bytes of cached history pages", m.history_cache_bytes;
        );
        m
    }

    /// Close reasons exported (as 0) before they first happen.
    pub const CHARTED_CLOSES: [&'static str; 3] = ["slow_consumer", "flood", "capacity"];

    /// Counts an outbound frame of `kind`.
    pub fn frame_out(&self, kind: &'static str) {
        self.frames_out.get_or_create(&Kind { kind }).inc();
    }

    /// Counts an error frame with `code`.
    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&Kind { kind: code }).inc();
    }

    /// Counts a close for `reason`.
    pub fn close(&self, reason: &'static str) {
        self.closes.get_or_create(&Kind { kind: reason }).inc();
    }
}

/// Observes the time from [`ObserveOnDrop::start`] to its drop in a histogram, in seconds, on
/// every return path.
pub struct ObserveOnDrop<'a> {
    histogram: &'a Histogram,
    started: std::time::Instant,
}

impl<'a> ObserveOnDrop<'a> {
    /// Starts timing into `histogram`.
    pub fn start(histogram: &'a Histogram) -> Self {
        Self {
            histogram,
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for ObserveOnDrop<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}
