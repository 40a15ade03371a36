//! This gateway's side of presence: which users have connections here, written to the
//! `CHAT_PRESENCE` bucket on change only, a heartbeat that says the gateway is alive, and the
//! `presence` query.
//!
//! - **Device keys.** `dev.<user>.<gateway>` exists while the user has at least one connection on
//!   this gateway: put on the first, deleted after the last. Further connections of the same user
//!   write nothing. One writer task sends the changes in the order they happened, pipelined (it
//!   does not wait for each acknowledgement before sending the next), so a reconnect cannot be
//!   overtaken by the close before it.
//! - **Heartbeat.** `gw.<gateway>` is updated every `heartbeat` with the revision it expects. The
//!   presence service deletes the key when it declares the gateway dead (a crash, or a pause longer
//!   than its timeout, e.g. a lost NATS connection); the next heartbeat then fails its expected
//!   revision, and the gateway re-creates the key and re-asserts every device key, so its users
//!   come back online instead of staying wrongly offline.
//! - **Keys removed behind our back.** The gateway watches its own device keys: one deleted while
//!   the user is still connected here (a presence service buried us on a stale view, an operator
//!   purged it) is written again at once, and every (re)start of that watch re-asserts them all,
//!   since deletions may have passed unseen meanwhile.
//! - **Clean shutdown** deletes the heartbeat: the presence service buries the gateway at once and
//!   its users go offline after the grace unless they reconnected elsewhere.
//!
//! The gateway id is random per process start, so a restarted gateway never inherits the keys of
//! its previous life; those are buried with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, UpdateErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use chatfabric_nats::subject;
use chatfabric_nats::wire::{now_ms, PresenceEntry};
use chatfabric_nats::{Fabric, UserId};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Presence and ephemeral-event settings of a gateway.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// How often the gateway's heartbeat key is refreshed. Must be well below the presence
    /// service's gateway timeout (10 s by default).
    pub heartbeat: Duration,
    /// Sustained `typing` frames per second per connection.
    pub typing_rate: f64,
    /// `typing` burst per connection.
    pub typing_burst: f64,
    /// How long receivers treat a `typing` `start` as valid without another one.
    pub typing_ttl: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            typing_rate: 1.0,
            typing_burst: 5.0,
            typing_ttl: Duration::from_secs(6),
        }
    }
}

/// Device-key changes, in the order they happened.
enum Change {
    /// The user's first connection here opened.
    Up(UserId),
    /// The user's last connection here closed.
    Down(UserId),
    /// The presence service buried us while we were alive: write every device key again.
    Reassert,
    /// `user`'s device key was deleted by someone else: write it again if still connected.
    Restore(UserId),
}

/// The users connected to this gateway, mirrored into the presence bucket.
pub(crate) struct Devices {
    /// This process's gateway id (random per start).
    gateway: String,
    /// Connections per user; changes between 0 and 1 are written.
    counts: Mutex<HashMap<UserId, usize>>,
    /// To the writer task; unbounded so a connection never waits, and sent under the `counts`
    /// lock so the queue's order is the order of the count changes.
    tx: mpsc::UnboundedSender<Change>,
}

/// Held by a connection while it is open; dropping it counts the connection out.
pub(crate) struct DeviceGuard {
    devices: Arc<Devices>,
    user: UserId,
}

impl Drop for DeviceGuard {
    fn drop(&mut self) {
        let mut counts = self
            .devices
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
                let _ = self.devices.tx.send(Change::Down(self.user.clone()));
            }
        }
    }
}

impl Devices {
    /// Starts the writer and the heartbeat; both stop on `shutdown`, and the heartbeat key is
    /// deleted then.
    pub(crate) fn start(
        fabric: &Fabric,
        config: &PresenceConfig,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let gateway = uuid::Uuid::now_v7().simple().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let devices = Arc::new(Self {
            gateway,
            counts: Mutex::new(HashMap::new()),
            tx,
        });
        tokio::spawn(writer(
            devices.clone(),
            fabric.clone(),
            rx,
            metrics.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(guard_keys(
            devices.clone(),
            fabric.presence.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        let beat = tokio::spawn(heartbeat(
            devices.clone(),
            fabric.presence.clone(),
            config.heartbeat,
            metrics,
            shutdown,
        ));
        (devices, beat)
    }

    /// This gateway's id in the presence bucket.
    pub(crate) fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Counts a connection of `user` in until the guard drops.
    pub(crate) fn connect(self: &Arc<Self>, user: &UserId) -> DeviceGuard {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(user.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            let _ = self.tx.send(Change::Up(user.clone()));
        }
        DeviceGuard {
            devices: self.clone(),
            user: user.clone(),
        }
    }
}

/// Device-key writes in flight before the writer waits for acknowledgements.
const IN_FLIGHT: usize = 256;

async fn writer(
    devices: Arc<Devices>,
    fabric: Fabric,
    mut rx: mpsc::UnboundedReceiver<Change>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let kv = &fabric.presence;
    let prefix = kv.put_prefix.clone().unwrap_or_else(|| kv.prefix.clone());
    let mut acks = FuturesUnordered::new();
    let value = || Bytes::from(format!("{{\"since\":{}}}", now_ms()));
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(done) = acks.next(), if !acks.is_empty() => {
                if let Err(e) = done {
                    metrics.presence_write_errors.inc();
                    tracing::warn!(error = %e, "device key write not acknowledged");
                }
                continue;
            }
            change = rx.recv(), if acks.len() < IN_FLIGHT => match change {
                Some(c) => c,
                None => return,
            },
        };
        let writes: Vec<(UserId, bool)> = match change {
            Change::Up(user) => vec![(user, true)],
            Change::Down(user) => vec![(user, false)],
            // Checked here, in queue order: a Down queued before it already deleted the key.
            Change::Restore(user) => {
                let connected = devices
                    .counts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&user);
                if connected {
                    vec![(user, true)]
                } else {
                    Vec::new()
                }
            }
            Change::Reassert => devices
                .counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .map(|u| (u.clone(), true))
                .collect(),
        };
        for (user, up) in writes {
            let subject = format!("{prefix}{}", subject::device_key(&user, &devices.gateway));
            let sent = if up {
                fabric.js.publish(subject, value()).await
            } else {
                let mut headers = HeaderMap::new();
                headers.insert("KV-Operation", "DEL");
                fabric
                    .js
                    .publish_with_headers(subject, headers, Bytes::new())
                    .await
            };
            metrics.presence_writes.inc();
            match sent {
                Ok(ack) => acks.push(std::future::IntoFuture::into_future(ack)),
                Err(e) => {
                    metrics.presence_write_errors.inc();
                    tracing::warn!(%user, error = %e, "device key write failed");
                }
            }
        }
    }
}

/// Watches this gateway's own device keys and restores any deleted while its user is connected
/// here. The writer's own deletions come back too; the writer drops those, as the user is gone.
async fn guard_keys(
    devices: Arc<Devices>,
    kv: kv::Store,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let pattern = format!("dev.*.{}", devices.gateway);
    while !shutdown.is_cancelled() {
        match kv.watch(&pattern).await {
            Ok(mut watch) => {
                // Deletions may have passed while there was no watch.
                let _ = devices.tx.send(Change::Reassert);
                loop {
                    let entry = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        entry = watch.next() => entry,
                    };
                    let entry = match entry {
                        Some(Ok(entry)) => entry,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "device key watch failed; restarting it");
                            break;
                        }
                        None => break,
                    };
                    if entry.operation == kv::Operation::Put {
                        continue;
                    }
                    if let Some(subject::PresenceKey::Device(user, _)) =
                        subject::parse_presence_key(&entry.key)
                    {
                        metrics.presence_reasserts.inc();
                        let _ = devices.tx.send(Change::Restore(user));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch this gateway's device keys yet"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn heartbeat(
    devices: Arc<Devices>,
    kv: kv::Store,
    every: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let key = subject::gateway_key(&devices.gateway);
    let value = || Bytes::from(format!("{{\"ts\":{}}}", now_ms()));
    let mut revision: Option<u64> = None;
    // Set when we were buried and have not yet re-asserted our devices (the re-creation failed).
    let mut reassert = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        metrics.presence_writes.inc();
        let Some(rev) = revision else {
            match kv.put(&key, value()).await {
                Ok(rev) => {
                    revision = Some(rev);
                    if std::mem::take(&mut reassert) {
                        let _ = devices.tx.send(Change::Reassert);
                    }
                }
                Err(e) => {
                    metrics.presence_write_errors.inc();
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
            continue;
        };
        match kv.update(&key, value(), rev).await {
            Ok(rev) => revision = Some(rev),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                // Buried by the presence service (we were silent too long): come back to life.
                tracing::warn!(gateway = %devices.gateway, "declared dead by presence; re-asserting connected users");
                metrics.presence_reasserts.inc();
                match kv.put(&key, value()).await {
                    Ok(rev) => {
                        revision = Some(rev);
                        let _ = devices.tx.send(Change::Reassert);
                    }
                    Err(e) => {
                        revision = None;
                        reassert = true;
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                }
            }
            Err(e) => {
                metrics.presence_write_errors.inc();
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
    // A clean stop: tell the presence service at once rather than after the timeout.
    let _ = tokio::time::timeout(Duration::from_secs(2), kv.delete(&key)).await;
}

/// The answer to a `presence` query: `None` when the user was never seen.
pub(crate) async fn lookup(
    kv: &kv::Store,
    user: &UserId,
) -> Result<Option<PresenceEntry>, kv::EntryError> {
    Ok(kv
        .get(subject::user_presence_key(user))
        .await?
        .and_then(|v| serde_json::from_slice(&v).ok()))
}
