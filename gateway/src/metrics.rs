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

// One table declares each metric: its doc, field and type, how it is built, and the name and
// help it is exported under (the struct, its constructor and the registration are made from it).
macro_rules! gateway_metrics {
    ($( $(#[doc = $doc:literal])+ $field:ident: $ty:ty = $init:expr, $name:literal, $help:literal; )+) => {
        /// Every metric a gateway exports.
        #[derive(Clone)]
        pub struct Metrics {
            $( $(#[doc = $doc])+ pub $field: $ty, )+
        }

        impl Metrics {
            fn build() -> Self {
                Self { $( $field: $init, )+ }
            }

            fn register_each(&self, r: &mut Registry) {
                $( r.register($name, $help, self.$field.clone()); )+
            }
        }
    };
}

gateway_metrics! {
    /// Open WebSocket connections (authenticated or not).
    connections: Gauge = Gauge::default(), "connections", "Open WebSocket connections";
    /// Open server-sent event streams.
    sse_streams: Gauge = Gauge::default(), "sse_streams", "Open server-sent event streams";
    /// Connections accepted since start.
    connections_total: Counter = Counter::default(), "connections_accepted", "Connections accepted";
    /// Inbound frames by op (`invalid` for frames that did not decode).
    frames_in: Family<Kind, Counter> = Family::default(), "frames_in", "Inbound frames by op";
    /// Outbound frames by op.
    frames_out: Family<Kind, Counter> = Family::default(), "frames_out", "Outbound frames by op (msg frames: see deliveries)";
    /// `msg` frames handed to connections (one per delivery).
    deliveries: Counter = Counter::default(), "deliveries", "Message frames handed to connections";
    /// Sends acknowledged to clients.
    acks: Counter = Counter::default(), "acks", "Sends acknowledged";
    /// Sends acknowledged as duplicates of an earlier send (retries).
    acks_duplicate: Counter = Counter::default(), "acks_duplicate", "Sends acknowledged as retries of a stored message";
    /// Publishes of a send repeated (same message id) after a lost or refused PubAck.
    publish_retries: Counter = Counter::default(), "publish_retries", "Sends published again with the same id after a lost or refused PubAck";
    /// `error` frames by code.
    errors: Family<Kind, Counter> = Family::default(), "errors", "Error frames by code";
    /// Connections closed by the gateway, by reason (`slow_consumer`, `flood`, `unauthorized`, ...).
    closes: Family<Kind, Counter> = Family::default(), "closes", "Connections closed by the gateway, by reason";
    /// Gaps in a conversation's live feed that were filled from JetStream.
    gap_fills: Counter = Counter::default(), "gap_fills", "Live feed gaps filled from JetStream";
    /// Server API requests that reached an endpoint with a valid key, by endpoint.
    server_api_requests: Family<Kind, Counter> = Family::default(), "server_api_requests", "Server API requests with a valid key, by endpoint";
    /// Messages fetched from JetStream to fill gaps or resume subscriptions.
    fetched: Counter = Counter::default(), "fetched_messages", "Messages fetched from JetStream (gap fills, resumes)";
    /// Conversations with local subscribers (one NATS subscription each).
    live_conversations: Gauge = Gauge::default(), "live_conversations", "Conversations with local subscribers";
    /// Messages stored for NATS-direct publishers (bots, devices).
    ingest_accepted: Counter = Counter::default(), "ingest_accepted", "Messages stored for NATS-direct publishers";
    /// NATS-direct requests refused, by error code (malformed, oversized, not a member, ...).
    ingest_rejected: Family<Kind, Counter> = Family::default(), "ingest_rejected", "NATS-direct requests refused, by error code";
    /// Time from publish to PubAck, seconds.
    publish_latency: Histogram = Histogram::new(exponential_buckets(0.000_05, 2.0, 16)), "publish_latency_seconds", "Publish to PubAck latency";
    /// Time to answer one history page (cache, store and JetStream), seconds.
    history_latency: Histogram = Histogram::new(exponential_buckets(0.000_05, 2.0, 16)), "history_page_seconds", "Time to answer one history page";
    /// Ephemeral frames (presence, typing, read) handed to connections.
    ephemeral_deliveries: Counter = Counter::default(), "ephemeral_deliveries", "Presence, typing and read frames handed to connections";
    /// Ephemeral frames dropped because a connection's queue was full (the connection stays).
    ephemeral_dropped: Counter = Counter::default(), "ephemeral_dropped", "Presence, typing and read frames dropped for full queues";
    /// Ephemeral events received from NATS that did not parse or named another conversation.
    ephemeral_invalid: Counter = Counter::default(), "ephemeral_invalid", "Ephemeral events from NATS that did not parse";
    /// Writes to the presence bucket (device keys and heartbeats).
    presence_writes: Counter = Counter::default(), "presence_writes", "Presence bucket writes (device keys, heartbeats)";
    /// Presence bucket writes that failed.
    presence_write_errors: Counter = Counter::default(), "presence_write_errors", "Presence bucket writes that failed";
    /// Times the presence service buried this live gateway and it re-asserted its users.
    presence_reasserts: Counter = Counter::default(), "presence_reasserts", "Times this gateway was declared dead while alive and re-asserted its users";
    /// Bytes queued in all connections' outboxes (each bounded by `--queue-bytes`).
    queued_bytes: Gauge = Gauge::default(), "queued_bytes", "Bytes queued for clients in all outboxes";
    /// Bytes of history pages cached (bounded by `--history-cache-bytes`).
    history_cache_bytes: Gauge = Gauge::default(), "history_cache_bytes", "Bytes of cached history pages";
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under the `chatfabric_gateway` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::build();
        // Reasons a dashboard charts exist from the start, so a rate over them reads 0, not
        // "no data", until the first close.
        for reason in Self::CHARTED_CLOSES {
            let _ = m.closes.get_or_create(&Kind { kind: reason });
        }
        m.register_each(registry.sub_registry_with_prefix("chatfabric_gateway"));
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
