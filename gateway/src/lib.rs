//! The chatfabric gateway: WebSocket, SSE, REST and NATS-direct clients in, NATS JetStream
//! behind.
//!
//! # Layout
//!
//! The modules form layers; each imports only from the layers below it (no import circles), and
//! nothing imports this file:
//!
//! 1. **Front ends** translate their wire format to typed requests of the service and its
//!    results back, and own per-connection limits:
//!    - [`http`]: accepts TCP, serves `/healthz`, `/readyz`, `/metrics`, upgrades `/ws`, and
//!      routes to [`http::sse`] (event streams), REST history and send, and [`http::demo`];
//!      WebSockets and event streams each hold a `capacity` slot under `--max-connections`.
//!    - `ws`: one task per WebSocket: the socket task (authenticate with [`auth`], read a
//!      **frame**, write replies and the outbound queue, close within the grace) apart from the
//!      session (decode, rate-limit with [`rate`], dispatch each op to the service).
//!    - [`ingest`]: bots and devices that speak NATS (`chat.in`, `chat.read`).
//!    - `http::server_api`: the application backend's API (`/v1/server/...`), authenticated
//!      with [`api_keys`] and acting as a [`service::Caller::Service`] or on a user's behalf.
//!    - `edge`: the one place where service errors become client-facing [`protocol::ErrorCode`]s
//!      and results become frames.
//! 2. **[`service`]**: every operation, for an authenticated [`service::Caller`]: send
//!    (validate -> membership -> publish -> ack), history page, subscribe, conversations,
//!    read receipts, presence query, typing. Typed requests, typed results, [`service::ServiceError`].
//! 3. **Domain** (never imports the wire protocol):
//!    - [`membership`]: who may read and write which conversation (KV bucket + moka cache).
//!    - [`send`]: a message becomes a stored message on the conversation's **subject** in
//!      **JetStream**; resolves after the PubAck (retried with the same id within the deadline).
//!    - [`history`]: pages from the persister's store below its watermark and from JetStream
//!      above it, cached per page within a byte budget.
//!    - [`receipts`]: read cursors, their events, unread counts.
//!    - [`users`]: the application's disconnects and token revocations (the `CHAT_USERS`
//!      bucket, watched by every gateway) and this gateway's open connections per user.
//!    - [`presence`]: this gateway's connected users in the presence bucket (written on change
//!      only, through a bounded queue coalesced per user), its heartbeat, the presence query,
//!      typing events.
//! 4. **Delivery**: [`fanout`]: one NATS subscription per conversation with local members;
//!    gap-free, encoded once (with [`protocol`]'s encoders), **fan-out** to each connection's
//!    [`outbox`] (bounded in frames and bytes, the fan-out's only way to a connection), which
//!    writes a WebSocket frame straight to the **client**'s socket when nothing is queued and
//!    leaves the rest to the connection's task. Presence, typing and read events take the same
//!    way through the conversation actors.
//! 5. **Bottom**: [`protocol`] (frames, the op table, error and close codes, encoders), [`auth`],
//!    [`api_keys`],
//!    [`rate`], [`metrics`], `follow` (the KV watch loop of the bucket watchers): they import no
//!    other module of the crate.
//!
//! Beside the front ends, `config` ([`Limits`], [`GatewayConfig`]) gathers every layer's
//! settings and `state` holds what the front ends share (the service, limits, capacity, the
//! task tracker and shutdown token).
//!
//! [`run`] ties them together; `chatfabric gateway` and `chatfabric dev` call it.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod api_keys;
pub mod auth;
mod capacity;
mod config;
mod edge;
pub mod fanout;
mod follow;
pub mod history;
pub mod http;
pub mod ingest;
pub mod membership;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod rate;
pub mod receipts;
pub use service::send;
pub mod service;
mod state;
mod stored;
pub mod users;
mod ws;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use chatfabric_nats::Fabric;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::Authenticator;
pub use config::{GatewayConfig, Limits};

/// Unread-count computations a gateway runs at once.
const UNREAD_CONCURRENCY: usize = 16;

/// Errors that stop a gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Removals seen by the membership watch end the removed user's live subscriptions.
struct Evictions(fanout::Hub);

impl membership::MembershipEvents for Evictions {
    fn removed(&self, conv: &chatfabric_nats::ConvId, user: &chatfabric_nats::UserId) {
        self.0.evict(conv, user);
    }
}

/// Serves clients on `listener` until `shutdown` is cancelled, then closes every connection with
/// 1001 (clients resume elsewhere) and waits up to 10 s for tasks to finish. Before it serves, it
/// provisions the users bucket (the server API's disconnects), retrying while JetStream is not
/// ready.
///
/// `missed` is the connection's "messages may have been missed" signal from
/// [`chatfabric_nats::connect`]; on every change the fan-out checks JetStream for what it missed.
/// `registry` receives the gateway's metrics and is served on `/metrics`.
pub async fn run(
    listener: TcpListener,
    fabric: Fabric,
    config: GatewayConfig,
    missed: watch::Receiver<u64>,
    mut registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let addr = listener.local_addr()?;
    let Some(users) = users::bucket(&fabric, &shutdown).await else {
        return Ok(());
    };
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
            .watch(Arc::new(Evictions(hub.clone())), shutdown.clone()),
    );
    tracker.spawn(resync_on_reconnect(hub.clone(), missed, shutdown.clone()));
    let history = history::History::new(
        config.history,
        fabric.clone(),
        config.history_cache_bytes,
        metrics.history_cache_bytes.clone(),
    )
    .with_latency(metrics.history_latency.clone());
    let limits = config.limits;
    let service = Arc::new(service::Service::new(
        fabric.clone(),
        hub,
        membership,
        history,
        metrics.clone(),
        service::ServiceLimits {
            max_body: limits.max_body,
            publish_timeout: limits.publish_timeout,
            history_rate: limits.history_rate,
            history_burst: limits.history_burst,
            typing_ttl: config.presence.typing_ttl,
            client_membership: config.client_membership,
        },
        users.clone(),
    ));
    let auth = Arc::new(config.auth);
    let roster = users::Roster::new(protocol::close::DISCONNECTED);
    tracker.spawn(users::watch(
        users,
        roster.clone(),
        auth.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    // The heartbeat is not tracked: it outlives the connections' drain and is awaited last, so
    // its clean-stop delete comes after the accept loop stopped.
    let (devices, heartbeat) = presence::start(
        &fabric,
        &config.presence,
        metrics.clone(),
        &tracker,
        shutdown.clone(),
    );
    tracing::info!(gateway = devices.gateway(), "presence id");
    let state = Arc::new(state::State {
        auth,
        api_keys: config.api_keys,
        roster,
        capacity: capacity::Capacity::new(limits.max_connections),
        limits,
        fabric,
        service,
        devices,
        presence: config.presence,
        send_limits: rate::UserLimits::new(),
        api_limits: rate::UserLimits::new(),
        demo: config.demo,
        unread_permits: tokio::sync::Semaphore::new(UNREAD_CONCURRENCY),
        metrics,
        registry,
        next_conn: AtomicU64::new(0),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    });
    // Subscribed before the first client is accepted: a gateway that answers HTTP also serves
    // NATS-direct requests.
    if let Some(subs) = ingest::subscribe(&state).await {
        tracker.spawn(ingest::run(state.clone(), subs));
    }
    tracing::info!(%addr, "gateway listening");
    http::accept_loop(listener, state).await;
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within 10 s");
    }
    if let Err(e) = heartbeat.await {
        tracing::warn!(error = %e, "presence heartbeat task failed");
    }
    Ok(())
}

/// On every "messages may have been missed" signal, makes the fan-out look for them, and once
/// more a second later: the client reports a reconnect before its subscriptions are back on the
/// server, and what is stored in between shows up in the second look.
async fn resync_on_reconnect(
    hub: fanout::Hub,
    mut missed: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    missed.mark_unchanged();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = missed.changed() => {
                if changed.is_err() { return; }
                hub.resync_all();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => hub.resync_all(),
                }
            }
        }
    }
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
