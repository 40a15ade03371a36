//! Stored messages (and membership changes) held until every event built from them was delivered
//! or dead-lettered: the ack point of the webhook role.
//!
//! A [`Held`] is shared (`Arc`) by every event that depends on its message; the holder that
//! completes last acks it ([`complete`]). One dropped without completing (shutdown, a crash of a
//! task) is never acked, so JetStream redelivers it after `ack_wait`. While held, the message's
//! ack deadline is pushed back every `ack_wait / 3` ([`InFlight::keep_alive`]), so coalescing
//! windows and retry schedules longer than `ack_wait` never cause a redelivery to ourselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, Subject};
use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

/// What a delivery's ack belongs to: a stream and a sequence in it.
pub type Key = (Arc<str>, u64);

/// The messages held by this process, by key, with their ack subjects.
#[derive(Debug, Default)]
pub struct InFlight {
    replies: Mutex<HashMap<Key, Subject>>,
    /// How many are held (`chatfabric_webhooks_held_messages`).
    held: Gauge,
}

impl InFlight {
    /// An empty registry counting its holds in `held`.
    pub fn new(held: Gauge) -> Self {
        Self {
            replies: Mutex::default(),
            held,
        }
    }

    /// Holds a delivery; `None` if it is already held (JetStream redelivered it to us while we
    /// still work on it: the first delivery's ack covers both).
    pub fn hold(self: &Arc<Self>, client: &Client, key: Key, reply: Subject) -> Option<Arc<Held>> {
        let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        if replies.contains_key(&key) {
            return None;
        }
        replies.insert(key.clone(), reply.clone());
        self.held.inc();
        Some(Arc::new(Held {
            key,
            reply,
            client: client.clone(),
            registry: Arc::clone(self),
        }))
    }

    /// Sends "in progress" for every held delivery every `interval` until `shutdown`.
    pub async fn keep_alive(
        self: Arc<Self>,
        client: Client,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let replies: Vec<Subject> = {
                let r = self.replies.lock().unwrap_or_else(|e| e.into_inner());
                r.values().cloned().collect()
            };
            for reply in replies {
                if let Err(e) = client.publish(reply, Bytes::from_static(b"+WPI")).await {
                    // The ack deadline then runs out and the message is redelivered: a duplicate
                    // event at worst.
                    tracing::debug!(error = %e, "progress ack not sent");
                }
            }
        }
    }
}

/// One held delivery.
#[derive(Debug)]
pub struct Held {
    key: Key,
    reply: Subject,
    client: Client,
    registry: Arc<InFlight>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Acked or abandoned: either way no more progress for it.
        let mut replies = self
            .registry
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if replies.remove(&self.key).is_some() {
            self.registry.held.dec();
        }
    }
}

/// Releases one holder of each of `held`; acks those it was the last holder of.
pub async fn complete(held: Vec<Arc<Held>>) {
    for h in held {
        if let Some(h) = Arc::into_inner(h) {
            // A lost ack means a redelivery after ack_wait and a duplicate event, never a loss.
            if let Err(e) = h
                .client
                .publish(h.reply.clone(), Bytes::from_static(b"+ACK"))
                .await
            {
                tracing::debug!(error = %e, "ack not sent");
            }
        }
    }
}

/// Acks a delivery nobody needs to hold (no offline recipient).
pub async fn ack_now(client: &Client, reply: Subject) {
    if let Err(e) = client.publish(reply, Bytes::from_static(b"+ACK")).await {
        tracing::debug!(error = %e, "ack not sent");
    }
}
