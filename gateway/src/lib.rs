//! The chatfabric gateway: WebSocket clients in, NATS JetStream behind.
//!
//! # Layout
//!
//! The data path, in the order a message travels:
//!
//! - [`http`]: accepts TCP, serves `/healthz`, `/readyz`, `/metrics`, upgrades `/ws`, and routes
//!   to [`sse`] (event streams) and `api` (REST history and send), whose query strings and bearer
//!   header [`query`] parses; WebSockets and event streams each hold a `capacity` slot under
//!   `--max-connections`.
//! - [`connection`]: one task per WebSocket: authenticate ([`auth`]), read a **frame**, write
//!   replies and the outbound queue, close within the grace.
//! - `session`: the connection's operations: decode and **validate** each frame ([`protocol`],
//!   [`rate`]) and dispatch it.
//! - [`membership`]: who may read and write which conversation (KV bucket + moka cache).
//! - [`ingest`]: the same for bots and devices that speak NATS (`chat.in`, `chat.read`).
//! - [`send`]: a `send` becomes a stored message on the conversation's **subject** in **JetStream**;
//!   the sender gets `ack` after the PubAck.
//! - [`fanout`]: one NATS subscription per conversation with local members; gap-free, encoded
//!   once, **fan-out** to each connection's bounded queue, and on to the **client**.
//! - [`presence`]: this gateway's connected users and heartbeat in the presence bucket (written on
//!   change only), and the `presence` query; the presence service turns them into events.
//! - [`receipts`]: read cursors (`read`), their events, and unread counts sent after `ready`.
//!   Presence, typing and read events reach members through [`fanout`]'s conversation actors.
//! - [`history`]: history pages, from the persister's store below its watermark and from
//!   JetStream above it (complete even while the persister lags), cached per page within a byte
//!   budget.
//! - [`outbox`]: each connection's outbound queue, bounded in frames and bytes, the fan-out's only
//!   way to it.
//! - [`metrics`]: Prometheus counters for all of the above.
//! - [`demo`]: the demo chat page at `/` and, under `chatfabric dev`, its token endpoint.
//!
//! [`run`] ties them together; `chatfabric gateway` and `chatfabric dev` call it.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod api;
pub mod auth;
mod capacity;
mod connection;
pub mod demo;
pub mod fanout;
pub mod history;
mod http;
pub mod ingest;
pub mod membership;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod query;
pub mod rate;
pub mod receipts;
pub mod send;
mod session;
pub mod sse;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatfabric_nats::Fabric;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::Authenticator;

/// Limits that protect the gateway and other clients from any one connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket frame or message a client may send, in bytes (close 1009 past it).
    pub max_frame: usize,
    /// Largest message body, in bytes (`too_large` past it).
    pub max_body: usize,
    /// Outbound frames queued per connection before it is closed as a slow consumer (4008).
    pub queue: usize,
    /// Outbound bytes queued per connection before it is closed as a slow consumer (4008);
    /// replays fill at most half of it and then wait for the client to read.
    pub queue_bytes: usize,
    /// Sustained inbound frames per second per connection.
    pub rate: f64,
    /// Inbound burst per connection; this many refusals in a row close the connection (4029).
    pub burst: f64,
    /// Requests (sends, subscribes, ...) in flight per connection before the gateway stops reading.
    pub max_in_flight: usize,
    /// Time a client has to send `auth` when it did not authenticate on upgrade.
    pub auth_timeout: Duration,
    /// Time a send may take before `unavailable`: within it a lost or refused PubAck (a NATS node
    /// died, a stream leader election) is retried with the same message id.
    pub publish_timeout: Duration,
    /// WebSocket connections plus event streams this gateway serves at once before answering 503.
    pub max_connections: usize,
    /// When a connection must be closed while its socket is full, how long the gateway waits for
    /// the client to read on so the close code reaches it; after that it drops the connection.
    pub close_grace: Duration,
    /// tungstenite's read buffer per connection, in bytes (it is allocated eagerly).
    pub read_buffer: usize,
    /// Time an HTTP client has to send a request's headers, and then its body; past it the
    /// connection is closed (a body that does not arrive in time gets 408 first).
    pub request_timeout: Duration,
    /// How many conversations a user may be in, and how many of them others may put them in.
    pub conversations: membership::ConversationLimits,
    /// History pages per second per user (WebSocket and HTTP together), sustained.
    pub history_rate: f64,
    /// History pages a user may read in a burst.
    pub history_burst: f64,
    /// Subscribes per second per connection to conversations it subscribed to before, sustained.
    pub resubscribe_rate: f64,
    /// Re-subscribes a connection may send in a burst.
    pub resubscribe_burst: f64,
    /// `presence` queries per second per connection, sustained.
    pub presence_rate: f64,
    /// `presence` queries a connection may send in a burst.
    pub presence_burst: f64,
    /// `conversations` listing pages per second per connection, sustained.
    pub listing_rate: f64,
    /// `conversations` listing pages a connection may ask for in a burst: enough to walk the
    /// listing of a user in as many conversations as the limit allows at once.
    pub listing_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: 16 * 1024,
            max_body: 4 * 1024,
            queue: 256,
            queue_bytes: 2 << 20,
            rate: 50.0,
            burst: 100.0,
            max_in_flight: 64,
            auth_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            close_grace: Duration::from_secs(5),
            read_buffer: 1024,
            request_timeout: Duration::from_secs(10),
            conversations: membership::ConversationLimits::default(),
            history_rate: 10.0,
            history_burst: 20.0,
            resubscribe_rate: 1.0,
            resubscribe_burst: 10.0,
            presence_rate: 10.0,
            presence_burst: 50.0,
            listing_rate: 5.0,
            listing_burst: 50.0,
        }
    }
}

impl Limits {
    fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            // Frames are flushed as soon as a batch of queued frames is written.
            .write_buffer_size(0)
            .max_write_buffer_size(self.max_frame.max(64 * 1024) * 4)
            .max_message_size(Some(self.max_frame))
            .max_frame_size(Some(self.max_frame))
    }
}

/// Everything a gateway needs besides its listener.
pub struct GatewayConfig {
    /// Token verification.
    pub auth: Authenticator,
    /// Per-connection limits.
    pub limits: Limits,
    /// Fan-out tuning.
    pub hub: fanout::HubConfig,
    /// Membership answers cached.
    pub membership_cache: u64,
    /// How long a cached membership answer may be used without a watch event.
    pub membership_ttl: Duration,
    /// The history store the persister writes (the gateway only reads it).
    pub history: Arc<dyn chatfabric_storage::HistoryStore>,
    /// Bytes of history pages cached (each page weighs what its messages hold).
    pub history_cache_bytes: u64,
    /// Presence heartbeat and typing limits.
    pub presence: presence::PresenceConfig,
    /// The demo page and development token endpoint (off by default).
    pub demo: demo::DemoConfig,
}

/// State shared by all connections of a gateway.
pub(crate) struct State {
    auth: Authenticator,
    limits: Limits,
    /// Places for WebSocket connections and event streams (`limits.max_connections`).
    capacity: Arc<capacity::Capacity>,
    fabric: Fabric,
    hub: fanout::Hub,
    membership: Arc<membership::Membership>,
    history: history::History,
    /// This gateway's connected users, mirrored into the presence bucket.
    devices: Arc<presence::Devices>,
    presence: presence::PresenceConfig,
    /// Per-user limits of HTTP sends.
    send_limits: rate::UserLimits,
    /// Per-user limits of history reads (WebSocket and HTTP).
    history_limits: rate::UserLimits,
    /// What of the demo page this gateway serves.
    demo: demo::DemoConfig,
    /// Bounds the unread-count computations running at once: each costs JetStream requests, and
    /// a reconnect storm would otherwise turn into a storm of them that starves subscribes.
    unread_permits: tokio::sync::Semaphore,
    metrics: metrics::Metrics,
    registry: Registry,
    next_conn: AtomicU64,
    /// Cancelled once to stop everything: the accept loop, connections (close 1001), actors.
    shutdown: CancellationToken,
    /// Tracks connection and actor tasks so shutdown can wait for them to finish.
    tracker: TaskTracker,
}

impl State {
    fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn ready(&self) -> bool {
        self.fabric.client.connection_state() == async_nats::connection::State::Connected
    }
}

impl membership::MembershipEvents for fanout::Hub {
    fn removed(&self, conv: &chatfabric_nats::ConvId, user: &chatfabric_nats::UserId) {
        self.evict(conv, user);
    }
}

/// Unread-count computations a gateway runs at once.
const UNREAD_CONCURRENCY: usize = 16;

/// Errors that stop a gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Serves clients on `listener` until `shutdown` is cancelled, then closes every connection with
/// 1001 (clients resume elsewhere) and waits up to `drain` for tasks to finish.
///
/// `missed` is the connection's "messages may have been missed" signal from
/// [`chatfabric_nats::connect`]; on every change the fan-out checks JetStream for what it missed.
/// `registry` receives the gateway's metrics and is served on `/metrics`.
pub async fn run(
    listener: TcpListener,
    fabric: Fabric,
    config: GatewayConfig,
    mut missed: watch::Receiver<u64>,
    mut registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let addr = listener.local_addr()?;
    let metrics = metrics::Metrics::new(&mut registry);
    let tracker = TaskTracker::new();
    let hub = fanout::Hub::new(
        fabric.clone(),
        metrics.clone(),
        config.hub,
        tracker.clone(),
        shutdown.clone(),
    );
    let membership = Arc::new(membership::Membership::new(
        fabric.convs.clone(),
        fabric.client.clone(),
        config.membership_cache,
        config.membership_ttl,
        config.limits.conversations,
    ));
    tracker.spawn(
        membership
            .clone()
            .watch(Arc::new(hub.clone()), shutdown.clone()),
    );
    {
        let hub = hub.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            missed.mark_unchanged();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = missed.changed() => {
                        if changed.is_err() { return; }
                        hub.resync_all();
                        // The client reports a reconnect before its subscriptions are back on the
                        // server; what is stored in between shows up in a second look.
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => hub.resync_all(),
                        }
                    }
                }
            }
        });
    }
    let history = history::History::new(
        config.history,
        fabric.clone(),
        config.history_cache_bytes,
        metrics.history_cache_bytes.clone(),
    )
    .with_latency(metrics.history_latency.clone());
    // Not tracked: the heartbeat outlives the connections' drain and is awaited last, so its
    // clean-stop delete comes after the accept loop stopped.
    let (devices, heartbeat) =
        presence::Devices::start(&fabric, &config.presence, metrics.clone(), shutdown.clone());
    tracing::info!(gateway = devices.gateway(), "presence id");
    let state = Arc::new(State {
        auth: config.auth,
        capacity: capacity::Capacity::new(config.limits.max_connections),
        limits: config.limits,
        fabric,
        hub,
        membership,
        history,
        devices,
        presence: config.presence,
        send_limits: rate::UserLimits::new(),
        history_limits: rate::UserLimits::new(),
        demo: config.demo,
        unread_permits: tokio::sync::Semaphore::new(UNREAD_CONCURRENCY),
        metrics,
        registry,
        next_conn: AtomicU64::new(0),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    });
    tracker.spawn(ingest::run(state.clone()));
    tracing::info!(%addr, "gateway listening");
    http::accept_loop(listener, state).await;
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within 10 s");
    }
    let _ = heartbeat.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatfabric_nats::ConvId;

    #[test]
    fn the_largest_listing_page_fits_the_write_buffer() {
        // The longest id, and the longest title in its longest JSON form (`\u0001` per byte).
        let view = protocol::ConversationView {
            conv: ConvId::new("g".repeat(64)).unwrap(),
            kind: chatfabric_nats::wire::ConvKind::Group,
            title: Some("\u{1}".repeat(membership::MAX_TITLE_LEN)),
        };
        let page = protocol::ServerFrame::Conversations {
            conversations: vec![view; membership::MAX_LISTING_PAGE],
            next: Some(ConvId::new("g".repeat(64)).unwrap()),
            reference: Some("r".repeat(64)),
        };
        let limit = Limits::default().websocket_config().max_write_buffer_size;
        assert!(protocol::encode(&page).len() < limit);
    }
}
