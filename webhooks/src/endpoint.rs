//! Delivery to one receiver URL: a bounded queue, bounded concurrency, retries with backoff, and
//! the dead-letter stream after the last attempt.
//!
//! # Isolation
//!
//! Each URL has its own queue (at most `queue_events` events and `queue_bytes` bytes, counting
//! events waiting to be attempted, in flight and waiting out a backoff) and its own `concurrency`
//! requests in flight. Handing an event to a URL never waits: an event that does not fit is
//! dead-lettered for that URL at once (reason `overflow`). A failing or slow URL therefore never
//! delays another URL's events; what it can hold back is its own queue's events, whose messages
//! stay unacknowledged (held) until they are delivered or dead-lettered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dead::{self, DeadLetter, DeadReason};
use crate::event::EventKind;
use crate::metrics::{DeadLabel, KindLabel, Metrics};
use crate::pending::{self, Held};
use crate::sign::{Signer, SIGNATURE_HEADER};

/// Largest receiver answer read (and thrown away) so the connection can be reused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How events are delivered; the same for every URL.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Attempts per event and URL before it is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Backoff after the first failed attempt; doubles per attempt up to `retry_max`, ±20 %.
    pub retry_min: Duration,
    /// Longest backoff.
    pub retry_max: Duration,
    /// One attempt's deadline (connect, answer, body).
    pub timeout: Duration,
    /// Requests in flight per URL.
    pub concurrency: usize,
    /// Events queued per URL (waiting, in flight or in backoff).
    pub queue_events: usize,
    /// Bytes of event bodies queued per URL.
    pub queue_bytes: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            concurrency: 16,
            queue_events: 1000,
            queue_bytes: 16 << 20,
        }
    }
}

/// An event built from held messages, shared by its deliveries to every URL.
#[derive(Debug)]
pub struct Event {
    /// Stable id (see [`crate::event`]).
    pub id: String,
    /// Its type.
    pub kind: EventKind,
    /// The JSON body.
    pub body: Bytes,
    /// The messages it depends on.
    pub held: Vec<Arc<Held>>,
    /// Set when a delivery was abandoned (shutdown): the messages must then not be acked.
    abandoned: AtomicBool,
}

impl Event {
    /// An event of `kind` with `body`, holding `held` until every URL is done with it.
    pub fn new(id: String, kind: EventKind, body: Bytes, held: Vec<Arc<Held>>) -> Self {
        Self {
            id,
            kind,
            body,
            held,
            abandoned: AtomicBool::new(false),
        }
    }
}

/// One holder of `event` is done with it: the last one releases (acks) its messages, unless a
/// delivery was abandoned.
pub async fn release(event: Arc<Event>) {
    if let Some(event) = Arc::into_inner(event) {
        if !event.abandoned.load(Ordering::Acquire) {
            pending::complete(event.held).await;
        }
    }
}

/// One receiver URL.
pub struct Endpoint {
    url: String,
    uri: http::Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    signer: Signer,
    policy: DeliveryPolicy,
    /// Requests in flight.
    inflight: Semaphore,
    /// Room in the queue, in events and in bytes.
    room_events: Arc<Semaphore>,
    room_bytes: Arc<Semaphore>,
    js: jetstream::Context,
    metrics: Metrics,
}

/// A URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a URL.
    #[error("webhook URL {0:?} is not a valid URL")]
    Invalid(String),
    /// Neither `http` nor `https`.
    #[error("webhook URL {0:?}: only http:// and https:// URLs are supported")]
    Scheme(String),
}

impl Endpoint {
    /// An endpoint for `url`; `https://` receivers are verified against `tls`'s roots.
    pub fn new(
        url: &str,
        signer: Signer,
        policy: DeliveryPolicy,
        tls: Arc<rustls::ClientConfig>,
        js: jetstream::Context,
        metrics: Metrics,
    ) -> Result<Self, UrlError> {
        let uri = check_url(url)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(policy.timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(Arc::unwrap_or_clone(tls))
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(policy.concurrency)
            .build(connector);
        Ok(Self {
            url: url.to_string(),
            uri,
            client,
            signer,
            inflight: Semaphore::new(policy.concurrency.max(1)),
            room_events: Arc::new(Semaphore::new(policy.queue_events.max(1))),
            room_bytes: Arc::new(Semaphore::new(policy.queue_bytes.max(1))),
            policy,
            js,
            metrics,
        })
    }

    /// Queues `event` for this URL (never waits). The delivery task runs on `tasks` and stops
    /// early, abandoning the event, when `shutdown` is cancelled.
    pub fn submit(
        self: &Arc<Self>,
        event: Arc<Event>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let bytes = u32::try_from(event.body.len()).unwrap_or(u32::MAX);
        let room = Arc::clone(&self.room_events).try_acquire_owned().ok().zip(
            Arc::clone(&self.room_bytes)
                .try_acquire_many_owned(bytes)
                .ok(),
        );
        let this = Arc::clone(self);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            match room {
                Some(room) => {
                    this.metrics.queued.inc();
                    this.deliver(&event, &shutdown).await;
                    this.metrics.queued.dec();
                    drop(room);
                }
                None => {
                    tracing::warn!(url = %this.url, event = %event.id, "webhook queue full; dead-lettering");
                    this.dead_letter(&event, DeadReason::Overflow, 0, "", &shutdown).await;
                }
            }
            release(event).await;
        });
    }

    /// Attempts until a 2xx, the last attempt, or shutdown.
    async fn deliver(&self, event: &Event, shutdown: &CancellationToken) {
        let label = KindLabel {
            kind: event.kind.as_str(),
        };
        let started = Instant::now();
        let mut backoff = self.policy.retry_min;
        let attempts = self.policy.max_attempts.max(1);
        for attempt in 1..=attempts {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return abandon(event),
                outcome = self.attempt(event, attempt) => outcome,
            };
            let error = match outcome {
                Ok(()) => {
                    self.metrics.sent.get_or_create(&label).inc();
                    self.metrics
                        .delivery_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return;
                }
                Err(e) => e,
            };
            self.metrics.failed.get_or_create(&label).inc();
            if attempt == attempts {
                tracing::warn!(url = %self.url, event = %event.id, attempts, %error, "webhook failed; dead-lettering");
                self.dead_letter(event, DeadReason::Failed, attempts, &error, shutdown)
                    .await;
                return;
            }
            self.metrics.retried.get_or_create(&label).inc();
            tracing::debug!(url = %self.url, event = %event.id, attempt, %error, "webhook attempt failed; retrying");
            let pause = jitter(backoff);
            backoff = (backoff * 2).min(self.policy.retry_max);
            tokio::select! {
                _ = shutdown.cancelled() => return abandon(event),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One POST. `Err` describes why it did not count as delivered.
    async fn attempt(&self, event: &Event, attempt: u32) -> Result<(), String> {
        let _permit = self.inflight.acquire().await.map_err(|e| e.to_string())?;
        let unix = chatfabric_nats::wire::now_ms() / 1000;
        let request = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("chatfabric-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header("Chatfabric-Event-Id", &event.id)
            .header("Chatfabric-Event-Type", event.kind.as_str())
            .header("Chatfabric-Attempt", attempt)
            .header(SIGNATURE_HEADER, self.signer.header(unix, &event.body))
            .body(Full::new(event.body.clone()))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request: {}", with_sources(&e)))?;
            let status = response.status();
            // Read the answer so the connection can be reused; its content does not matter.
            let _ = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {}", status.as_u16()))
            }
        };
        tokio::time::timeout(self.policy.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.policy.timeout))?
    }

    /// Stores the event in the dead-letter stream, retrying until it is stored or shutdown.
    async fn dead_letter(
        &self,
        event: &Event,
        reason: DeadReason,
        attempts: u32,
        error: &str,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = self.policy.retry_min;
        loop {
            let letter = DeadLetter {
                id: &event.id,
                kind: event.kind.as_str(),
                url: &self.url,
                reason,
                attempts,
                error,
                body: event.body.clone(),
            };
            let stored = tokio::select! {
                _ = shutdown.cancelled() => return abandon(event),
                stored = dead::publish(&self.js, letter) => stored,
            };
            match stored {
                Ok(()) => {
                    self.metrics
                        .dead_lettered
                        .get_or_create(&DeadLabel {
                            kind: event.kind.as_str(),
                            reason: reason.as_str(),
                        })
                        .inc();
                    return;
                }
                Err(e) => {
                    tracing::warn!(event = %event.id, error = %e, "dead-letter publish failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return abandon(event),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.policy.retry_max);
                }
            }
        }
    }
}

/// Parses a receiver URL: `http[s]://host[:port]/path`.
pub fn check_url(url: &str) -> Result<http::Uri, UrlError> {
    let uri: http::Uri = url.parse().map_err(|_| UrlError::Invalid(url.into()))?;
    if uri.host().is_none() {
        return Err(UrlError::Invalid(url.into()));
    }
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(UrlError::Scheme(url.into()));
    }
    Ok(uri)
}

/// `e` and its sources, `: `-separated: hyper's own message ("client error (Connect)") does not
/// say that a certificate was refused or a connection reset.
fn with_sources(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn abandon(event: &Event) {
    event.abandoned.store(true, Ordering::Release);
}

/// `d` ± 20 %, so receivers recovering from an outage are not hit by every retry at once.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * fastrand::f64())
}
