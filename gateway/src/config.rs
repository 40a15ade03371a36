//! The gateway's configuration: [`Limits`] per connection and user, and [`GatewayConfig`].

use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::Authenticator;
use crate::http::demo;
use crate::{fanout, membership, presence};

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
    /// Inbound burst per connection; more refusals than this within 10 s (in a row or not) close
    /// the connection (4029).
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
    /// Server API requests per second per API key, sustained: a runaway backend cannot take
    /// the gateway from its clients.
    pub server_api_rate: f64,
    /// Server API requests a key may make in a burst.
    pub server_api_burst: f64,
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
            server_api_rate: 1000.0,
            server_api_burst: 2000.0,
        }
    }
}

impl Limits {
    pub(crate) fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            // tungstenite writes only pongs and the close frame, each at once into the outbox.
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
    /// The server API's keys (none: the server API refuses every request).
    pub api_keys: crate::api_keys::ApiKeys,
    /// What clients may do to membership themselves (default: everything, as before).
    pub client_membership: membership::ClientMembership,
}
