//! [`State`]: what every front end of one gateway shares, and who owns what in shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chatfabric_nats::Fabric;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api_keys::ApiKeys;
use crate::auth::Authenticator;
use crate::capacity::Capacity;
use crate::config::Limits;
use crate::http::demo::DemoConfig;
use crate::metrics::Metrics;
use crate::presence::{Devices, PresenceConfig};
use crate::rate::UserLimits;
use crate::service::Service;
use crate::users::Roster;

/// State shared by all connections of a gateway.
pub(crate) struct State {
    /// Verifies the tokens of WebSocket, event-stream and REST clients (and holds the
    /// revocations the users watch feeds it).
    pub(crate) auth: Arc<Authenticator>,
    /// The server API's keys.
    pub(crate) api_keys: ApiKeys,
    /// Open connections per user, closed by the application's disconnects.
    pub(crate) roster: Arc<Roster>,
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
    /// Per-key limits of server API requests (keyed by the key's service id).
    pub(crate) api_limits: UserLimits,
    /// What of the demo page this gateway serves.
    pub(crate) demo: DemoConfig,
    /// Bounds the unread-count computations running at once: each costs JetStream requests, and
    /// a reconnect storm would otherwise turn into a storm of them that starves subscribes.
    pub(crate) unread_permits: tokio::sync::Semaphore,
    pub(crate) metrics: Metrics,
    /// Served on `/metrics`.
    pub(crate) registry: Registry,
    /// The last connection id handed out (starts at 0).
    pub(crate) next_conn: AtomicU64,
    /// Cancelled once to stop everything: the accept loop, connections (close 1001), actors.
    pub(crate) shutdown: CancellationToken,
    /// Tracks connection and actor tasks so shutdown can wait for them to finish.
    pub(crate) tracker: TaskTracker,
}

impl State {
    /// A fresh connection id (WebSocket or event stream).
    pub(crate) fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether the gateway's NATS connection is up (`/readyz`).
    pub(crate) fn ready(&self) -> bool {
        self.fabric.client.connection_state() == async_nats::connection::State::Connected
    }
}
