//! [`State`]: what every front end of one gateway shares, and who owns what in shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chatfabric_nats::Fabric;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::capacity::Capacity;
use crate::config::Limits;
use crate::demo::DemoConfig;
use crate::metrics::Metrics;
use crate::presence::{Devices, PresenceConfig};
use crate::rate::UserLimits;
use crate::service::Service;

/// State shared by all connections of a gateway.
pub(crate) struct State {
    /// Verifies the tokens of WebSocket, event-stream and REST clients.
    pub(crate) auth: Authenticator,
    pub(crate) limits: Limits,
    /// Places for WebSocket connections and event streams (`limits.max_connections`).
    pub(crate) capacity: Arc<Capacity>,
    /// The NATS connection: readiness, and the ingest's subscriptions and replies.
    pub(crate) fabric: Fabric,
    /// Every operation the front ends offer.
    pub(crate) service: Arc<Service>,
    /// This gateway's connected users, mirrored into the presence bucket.
    pub(crate) devices: Arc<Devices>,
    /// Typing limits per connection.
    pub(crate) presence: PresenceConfig,
    /// Per-user limits of HTTP sends and NATS-direct requests.
    pub(crate) send_limits: UserLimits,
    /// What of the demo page this gateway serves.
    pub(crate) demo: DemoConfig,
    /// Bounds the unread-count computations running at once: each costs JetStream requests, and
    /// a reconnect storm would otherwise turn into a storm of them that starves subscribes.
    pub(crate) unread_permits: tokio::sync::Semaphore,
    pub(crate) metrics: Metrics,
    /// Served on `/metrics`.
    pub(crate) registry: Registry,
    next_conn: AtomicU64,
    /// Cancelled once to stop everything: the accept loop, connections (close 1001), actors.
    pub(crate) shutdown: CancellationToken,
    /// Tracks connection and actor tasks so shutdown can wait for them to finish.
    pub(crate) tracker: TaskTracker,
}

/// The parts of [`State`] that `run` builds before it.
pub(crate) struct Parts {
    pub(crate) auth: Authenticator,
    pub(crate) limits: Limits,
    pub(crate) fabric: Fabric,
    pub(crate) service: Arc<Service>,
    pub(crate) devices: Arc<Devices>,
    pub(crate) presence: PresenceConfig,
    pub(crate) demo: DemoConfig,
    pub(crate) unread_concurrency: usize,
    pub(crate) metrics: Metrics,
    pub(crate) registry: Registry,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl State {
    /// The state of a gateway with no connection yet.
    pub(crate) fn new(p: Parts) -> Self {
        Self {
            auth: p.auth,
            capacity: Capacity::new(p.limits.max_connections),
            limits: p.limits,
            fabric: p.fabric,
            service: p.service,
            devices: p.devices,
            presence: p.presence,
            send_limits: UserLimits::new(),
            demo: p.demo,
            unread_permits: tokio::sync::Semaphore::new(p.unread_concurrency),
            metrics: p.metrics,
            registry: p.registry,
            next_conn: AtomicU64::new(0),
            shutdown: p.shutdown,
            tracker: p.tracker,
        }
    }

    /// A fresh connection id (WebSocket or event stream).
    pub(crate) fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether the gateway's NATS connection is up (`/readyz`).
    pub(crate) fn ready(&self) -> bool {
        self.fabric.client.connection_state() == async_nats::connection::State::Connected
    }
}
