//! chatfabric's presence service: gateway heartbeats and device keys in JetStream KV become
//! online/offline events for the members of each user's conversations.
//!
//! # Layout
//!
//! Its place in the data path: WS connect/close -> gateway writes `dev.<user>.<gateway>` and beats
//! `gw.<gateway>` in the `CHAT_PRESENCE` **KV bucket** -> **presence service** (this crate) ->
//! `user.<user>` (compare-and-set) and `chat.eph.<conv>.presence` -> gateways' conversation actors
//! -> members' connections.
//!
//! - [`tracker`]: the state machine (liveness of gateways and users, grace, burial), no I/O.
//! - [`members`]: user -> conversations, from a watch of `CHAT_CONVS`.
//! - `service`: the loop: watches, ticks, KV writes with expected revisions, event publishing.
//!
//! Any number of instances may run: each builds the whole state from the buckets, and writes
//! carry the revision they expect, so exactly one instance wins each transition and only the
//! winner publishes its event. Write load is one heartbeat per gateway per interval plus one write
//! per change; it does not grow with idle online users.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod members;
mod service;
pub mod tracker;

use std::time::Duration;

use chatfabric_nats::Fabric;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Flags of `chatfabric presence` (each with a `CHATFABRIC_*` environment twin).
#[derive(Debug, Clone, clap::Args)]
pub struct PresenceArgs {
    /// A gateway whose heartbeat is older than this (ms) is dead; its users go offline after
    /// --offline-grace-ms more unless connected elsewhere. Keep it well above the gateways'
    /// heartbeat interval (2 s).
    #[arg(long, env = "CHATFABRIC_GATEWAY_TIMEOUT_MS", default_value_t = 10_000)]
    pub gateway_timeout_ms: u64,
    /// A user without connections goes offline after this long (ms); reconnecting within it is
    /// invisible to others.
    #[arg(long, env = "CHATFABRIC_OFFLINE_GRACE_MS", default_value_t = 3_000)]
    pub offline_grace_ms: u64,
}

impl PresenceArgs {
    /// The service configuration these flags describe (metrics fresh; register them).
    pub fn config(&self) -> PresenceConfig {
        PresenceConfig {
            gateway_timeout: Duration::from_millis(self.gateway_timeout_ms),
            offline_grace: Duration::from_millis(self.offline_grace_ms),
            ..PresenceConfig::default()
        }
    }
}

/// How the service detects failures. A crashed gateway's users go offline within
/// `gateway_timeout + offline_grace + tick` (13.5 s by default).
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Heartbeat age after which a gateway is dead.
    pub gateway_timeout: Duration,
    /// Time without connections before a user goes offline.
    pub offline_grace: Duration,
    /// How often timers are checked.
    pub tick: Duration,
    /// A presence watch that delivered nothing for this long (the service writes a probe key
    /// three times as often) is presumed stalled and replaced by a fresh read of the bucket.
    /// Capped at half the gateway timeout, so a stall is noticed before anyone is buried for it.
    pub watch_stale: Duration,
    /// The service's metrics.
    pub metrics: PresenceMetrics,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            gateway_timeout: Duration::from_secs(10),
            offline_grace: Duration::from_secs(3),
            tick: Duration::from_millis(500),
            watch_stale: Duration::from_secs(3),
            metrics: PresenceMetrics::default(),
        }
    }
}

/// A label naming a transition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transition {
    /// `online` or `offline`.
    pub kind: &'static str,
}

/// Metrics of a presence service.
#[derive(Clone, Debug, Default)]
pub struct PresenceMetrics {
    /// Transitions this instance won and published, by kind.
    pub transitions: Family<Transition, Counter>,
    /// Transitions lost to another instance (or failed writes).
    pub conflicts: Counter,
    /// Gateways declared dead by this instance (and burials repeated for keys left behind).
    pub gateways_buried: Counter,
    /// Watches dropped because they delivered nothing for too long (see `watch_stale`).
    pub watch_restarts: Counter,
    /// Users tracked.
    pub users: Gauge,
    /// Live gateways.
    pub gateways: Gauge,
}

impl PresenceMetrics {
    /// Registers the metrics under the `chatfabric_presence` prefix.
    pub fn register(&self, registry: &mut Registry) {
        // Both kinds exist from the start, so a dashboard's rate reads 0 rather than "no data".
        for kind in ["online", "offline"] {
            let _ = self.transitions.get_or_create(&Transition { kind });
        }
        let r = registry.sub_registry_with_prefix("chatfabric_presence");
        chatfabric_nats::register_metrics!(r;
            "transitions", "Presence transitions published", self.transitions;
            "conflicts", "Presence writes lost to another instance", self.conflicts;
            "gateways_buried", "Gateways declared dead", self.gateways_buried;
            "watch_restarts", "Presence watches replaced because they went silent", self.watch_restarts;
            "users", "Users tracked", self.users;
            "gateways", "Live gateways", self.gateways;
        );
    }

    fn transition(&self, kind: &'static str) {
        self.transitions.get_or_create(&Transition { kind }).inc();
    }
}

/// Runs the presence service until `shutdown`.
pub async fn run(fabric: Fabric, config: PresenceConfig, shutdown: CancellationToken) {
    service::run(fabric, config, shutdown).await
}
