//! How the drain consumes: its settings and the durable pull consumer every persister shares.

use std::time::Duration;

use async_nats::jetstream::consumer;

use crate::metrics::Metrics;

/// How the drain consumes.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Durable consumer name, shared by every persister process of a deployment.
    pub durable: String,
    /// Most messages per fetch (and per store write).
    pub max_batch: usize,
    /// Longest a fetch waits for a batch to fill; also bounds the shutdown latency.
    pub max_wait: Duration,
    /// Payloads above this many bytes are dead-lettered.
    pub max_message_bytes: usize,
    /// How long JetStream waits for an ack before redelivering to another persister.
    pub ack_wait: Duration,
    /// How often the consumer's ack floor is read and the watermark stored and published.
    pub watermark_interval: Duration,
    /// First delay after a failed store write or fetch; doubles up to `retry_max`.
    pub retry_min: Duration,
    /// Longest delay between retries.
    pub retry_max: Duration,
    /// Where the drain reports; register it once with [`Metrics::register`].
    pub metrics: Metrics,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            durable: "persister".into(),
            max_batch: 256,
            max_wait: Duration::from_millis(100),
            max_message_bytes: 64 * 1024,
            ack_wait: Duration::from_secs(30),
            watermark_interval: Duration::from_millis(100),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            metrics: Metrics::default(),
        }
    }
}

impl DrainConfig {
    /// The pull consumer configuration every persister shares.
    pub fn consumer_config(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some("chatfabric persister: stream -> history store".into()),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            // Never give up on a message: a store outage must not turn into lost history.
            max_deliver: -1,
            // Room for a few persisters with a batch each in flight, plus naks waiting out delays.
            max_ack_pending: (self.max_batch as i64).saturating_mul(64).max(1024),
            ..Default::default()
        }
    }
}
