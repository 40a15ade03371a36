//! chatfabric's webhook role: stored messages for offline members, and membership changes, become
//! signed HTTP events for the application's backend (push notifications, e-mail).
//!
//! # Layout
//!
//! Its place in the data path: WS/SSE frame -> command -> subject -> JetStream -> fan-out /
//! persister / **webhooks -> receiver URLs**. It is never on the send path: a gateway acks a send
//! when JetStream stored it, and this role reads the streams afterwards.
//!
//! - [`follow`]: one durable pull consumer per message partition and one on the conversations
//!   bucket; decides each message's offline recipients and feeds the windows.
//! - [`directory`]: mirrors of the members (`CHAT_CONVS`) and of published presence
//!   (`CHAT_PRESENCE`), so a message's recipients are decided without a KV read.
//! - [`coalesce`]: per-conversation windows; one batch per offline member per window.
//! - [`event`]: the JSON events and their stable ids.
//! - [`endpoint`]: per-URL queues, concurrency, retries with backoff, dead letters.
//! - [`pending`]: the ack point: a message is acked once every event built from it is done.
//! - [`dead`]: the dead-letter stream `CHAT_WEBHOOKS_DEAD`.
//! - [`sign`]: `Chatfabric-Signature` (HMAC-SHA256 over timestamp and body) and its check.
//! - [`tls`]: the roots `https://` receivers are verified against.
//! - [`metrics`], [`health`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`config`]: the flags of `chatfabric webhooks` and the role's configuration.
//! - `shared`: what every follower and delivery shares, and the hand-off of an event to every URL.
//!
//! `chatfabric webhooks` is: parse [`WebhooksArgs`], connect and provision, [`health::serve`],
//! then [`run`] until the shutdown token fires. docs/WEBHOOKS.md is the receivers' contract.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod coalesce;
pub mod config;
pub mod dead;
pub mod directory;
pub mod endpoint;
pub mod event;
mod follow;
pub mod health;
pub mod metrics;
pub mod pending;
mod shared;
pub mod sign;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chatfabric_nats::provision::ensure_stream;
use chatfabric_nats::{subject, Fabric};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ConfigError, WebhookConfig, WebhooksArgs};
pub use endpoint::{DeliveryPolicy, Endpoint, Event, UrlError};
pub use metrics::Metrics;
pub use sign::{verify, Signer};

use follow::{Follower, Source};
use shared::Shared;

/// How long shutdown waits for deliveries to stop (they abandon their events; the messages are
/// redelivered after a restart).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the role could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A receiver URL is unusable.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The dead-letter stream could not be created or updated.
    #[error("creating the dead-letter stream CHAT_WEBHOOKS_DEAD: {0} (is JetStream enabled, and does another stream own chat.webhooks.dead.>?)")]
    DeadLetterStream(#[source] jetstream::context::CreateStreamError),
    /// A durable consumer could not be created or updated.
    #[error("creating consumer {durable} on {stream}: {source} (was it created with a config that cannot be changed?)")]
    Consumer {
        /// The stream.
        stream: String,
        /// The consumer.
        durable: String,
        /// The server's answer.
        #[source]
        source: jetstream::stream::ConsumerError,
    },
}

/// The followed streams, each with its durable consumer created (or updated): every message
/// partition (consumer `<durable>`) and the conversations bucket (`<durable>-members`).
async fn followers(
    fabric: &Fabric,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
) -> Result<Vec<Follower>, WebhookError> {
    let durable = &shared.config.durable;
    let mut sources: Vec<_> = fabric
        .streams
        .iter()
        .enumerate()
        .map(|(part, stream)| {
            let name = subject::stream_name(part as u16);
            (Source::Messages, name, stream.clone(), durable.clone())
        })
        .collect();
    sources.push((
        Source::Members,
        fabric.convs.stream_name.clone(),
        fabric.convs.stream.clone(),
        format!("{durable}-members"),
    ));
    let mut followers = Vec::new();
    for (source, name, stream, durable) in sources {
        let consumer = stream
            .create_consumer(follow::consumer_config(shared, durable.clone()))
            .await
            .map_err(|source| WebhookError::Consumer {
                stream: name.clone(),
                durable: durable.clone(),
                source,
            })?;
        followers.push(Follower {
            source,
            name: name.into(),
            stream,
            durable,
            consumer,
            shared: Arc::clone(shared),
            shutdown: stop.clone(),
        });
    }
    Ok(followers)
}

/// Runs the role on `fabric` until `shutdown`: creates the dead-letter stream and the durable
/// consumers, loads the mirrors, then follows every stream. `ready` turns true once events flow.
/// Returns `Err` only when start-up fails (retry it); delivery failures are retried, then
/// dead-lettered, never returned.
pub async fn run(
    fabric: Fabric,
    config: WebhookConfig,
    ready: &watch::Sender<bool>,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    ensure_stream(
        &fabric.js,
        dead::dead_stream_config(fabric.settings.replicas),
    )
    .await
    .map_err(WebhookError::DeadLetterStream)?;
    let endpoints = config
        .urls
        .iter()
        .map(|url| {
            Endpoint::new(
                url,
                config.signer.clone(),
                config.delivery.clone(),
                Arc::clone(&config.tls),
                fabric.js.clone(),
                config.metrics.clone(),
            )
            .map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stop = shutdown.child_token();
    let shared = Arc::new(Shared {
        client: fabric.client.clone(),
        inflight: Arc::new(pending::InFlight::new(config.metrics.held.clone())),
        directory: directory::Directory::default(),
        endpoints,
        tasks: TaskTracker::new(),
        shutdown: stop.clone(),
        metrics: config.metrics.clone(),
        config,
    });
    let followers = followers(&fabric, &shared, &stop).await?;
    let background = TaskTracker::new();
    background.spawn(
        shared
            .directory
            .clone()
            .run(fabric.js.clone(), stop.clone()),
    );
    background.spawn(Arc::clone(&shared.inflight).keep_alive(
        fabric.client.clone(),
        shared.config.ack_wait / 3,
        stop.clone(),
    ));
    // Deciding recipients from half-loaded mirrors would notify online users.
    shared.directory.loaded(&stop).await;
    if !stop.is_cancelled() {
        tracing::info!(
            urls = shared.endpoints.len(),
            streams = followers.len(),
            coalesce_ms = shared.config.coalesce.as_millis() as u64,
            "webhooks following"
        );
        let _ = ready.send(true);
    }
    for follower in followers {
        background.spawn(follower.run());
    }
    background.close();
    stop.cancelled().await;
    let _ = ready.send(false);
    shared.tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        background.wait().await;
        shared.tasks.wait().await;
    })
    .await
    .is_err()
    {
        tracing::warn!("webhook deliveries did not stop in time");
    }
    Ok(())
}
