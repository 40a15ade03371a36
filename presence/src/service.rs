//! The presence service's loop: watch the presence and conversations buckets, tick the
//! [`Tracker`], carry out its actions against KV and publish the events.
//!
//! **A stale view is the service's own fault until proven otherwise.** A watch can stall without
//! an error (its NATS node died and the consumer was not re-created); the service would then hear
//! no heartbeats and bury every live gateway. So the service writes a probe key every
//! `watch_stale / 3`, and a watch that delivered nothing (not even the probe) for `watch_stale`
//! is dropped: the session restarts from the bucket's contents, with every gateway counted as
//! heard from at that moment. `watch_stale` is well below the gateway timeout, so a stalled watch
//! is replaced before anyone could be buried for it. A burial also checks the gateway's heartbeat
//! key first (delete only at the revision last seen): a gateway that beat meanwhile keeps its
//! devices.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use chatfabric_nats::subject::{self, Ephemeral, PresenceKey};
use chatfabric_nats::wire::{now_ms, EphemeralEvent, PresenceEntry};
use chatfabric_nats::{Fabric, UserId};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::PresenceConfig;
use crate::members::Memberships;
use crate::metrics::PresenceMetrics;
use crate::tracker::{Action, Timing, Tracker};

/// What `user.<user>` holds after a write: the entry and its revision, or nothing.
type Stored = Option<(PresenceEntry, u64)>;

/// Transitions carried out concurrently (a dead gateway may take thousands of users with it).
const CONCURRENCY: usize = 64;

/// The key every presence service writes to prove its watch delivers (ignored by the tracker).
const PROBE_KEY: &str = "probe";

/// Runs until `shutdown`. Watches are restarted with a fresh state when they fail.
pub(crate) async fn run(fabric: Fabric, config: PresenceConfig, shutdown: CancellationToken) {
    let timing = Timing {
        gateway_timeout: config.gateway_timeout,
        offline_grace: config.offline_grace,
    };
    let metrics = config.metrics.clone();
    // The probe writes in flight, so the service returns only after they finished (or timed out).
    let probes = TaskTracker::new();
    while !shutdown.is_cancelled() {
        match session(&fabric, timing, &config, &metrics, &probes, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "presence watch failed; restarting with a fresh state");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    probes.close();
    probes.wait().await;
}

/// One watch session: state rebuilt from the buckets' current contents, then kept current.
async fn session(
    fabric: &Fabric,
    timing: Timing,
    config: &PresenceConfig,
    metrics: &PresenceMetrics,
    probes: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let mut presence = fabric
        .presence
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    let mut convs = fabric
        .convs
        .watch_with_history("m.>")
        .await
        .map_err(|e| e.to_string())?;
    let mut tracker = Tracker::new(timing);
    let mut members = Memberships::default();
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stale = config.watch_stale.min(config.gateway_timeout / 2);
    let mut probe = tokio::time::interval(stale / 3);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    loop {
        let actions = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            entry = presence.next() => {
                let entry = entry.ok_or("presence watch ended")?.map_err(|e| e.to_string())?;
                heard = Instant::now();
                apply(&mut tracker, &entry)
            }
            _ = probe.tick() => {
                let kv = fabric.presence.clone();
                let value = Bytes::from(now_ms().to_string());
                probes.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), kv.put(PROBE_KEY, value)).await;
                });
                continue;
            }
            entry = convs.next() => {
                let entry = entry.ok_or("membership watch ended")?.map_err(|e| e.to_string())?;
                members.apply(&entry);
                continue;
            }
            _ = tick.tick() => {
                if heard.elapsed() > stale {
                    metrics.watch_restarts.inc();
                    return Err(format!(
                        "presence watch delivered nothing (not even our probe) for {stale:?}"
                    ));
                }
                let actions = tracker.tick(Instant::now(), now_ms());
                metrics.users.set(tracker.users() as i64);
                metrics.gateways.set(tracker.gateways() as i64);
                actions
            }
        };
        if actions.is_empty() {
            continue;
        }
        let members = &members;
        let results: Vec<Option<(UserId, Stored)>> = futures::stream::iter(actions)
            .map(|a| execute(fabric, members, metrics, a))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        // What the writes left in KV, fed back so the next transition expects the right revision.
        let (now, wall) = (Instant::now(), now_ms());
        let mut follow_up = Vec::new();
        for (user, stored) in results.into_iter().flatten() {
            follow_up.extend(tracker.stored(&user, stored, now, wall));
        }
        // A lost race may leave the state out of date with liveness: try again once, at once.
        for a in follow_up {
            if let Some((user, stored)) = execute(fabric, members, metrics, a).await {
                tracker.stored(&user, stored, now, wall);
            }
        }
    }
}

fn apply(tracker: &mut Tracker, entry: &kv::Entry) -> Vec<Action> {
    let (now, wall) = (Instant::now(), now_ms());
    let put = entry.operation == Operation::Put;
    match subject::parse_presence_key(&entry.key) {
        Some(PresenceKey::Gateway(g)) if put => tracker.gateway_put(&g, entry.revision, now, wall),
        Some(PresenceKey::Gateway(g)) => tracker.gateway_deleted(&g, now, wall),
        Some(PresenceKey::Device(u, g)) if put => {
            tracker.device_put(&u, &g, entry.revision, now, wall)
        }
        Some(PresenceKey::Device(u, g)) => tracker.device_deleted(&u, &g, now, wall),
        Some(PresenceKey::User(u)) => {
            let stored = if put {
                match serde_json::from_slice::<PresenceEntry>(&entry.value) {
                    Ok(e) => Some((e, entry.revision)),
                    Err(e) => {
                        tracing::warn!(key = %entry.key, error = %e, "unreadable presence entry; treated as absent");
                        None
                    }
                }
            } else {
                None
            };
            tracker.stored(&u, stored, now, wall)
        }
        None => Vec::new(),
    }
}

/// Carries out one action. A `Publish` returns what `user.<user>` holds afterwards (ours when we
/// won, the winner's when we lost), so the tracker expects the right revision next time.
async fn execute(
    fabric: &Fabric,
    members: &Memberships,
    metrics: &PresenceMetrics,
    action: Action,
) -> Option<(UserId, Stored)> {
    match action {
        Action::Bury {
            gateway,
            revision,
            devices,
        } => {
            let kv = &fabric.presence;
            let key = subject::gateway_key(&gateway);
            // Only a gateway whose heartbeat is still the one we saw last (or, never seen, absent)
            // is dead: one that beat meanwhile keeps its devices.
            let dead = if revision > 0 {
                kv.delete_expect_revision(&key, Some(revision))
                    .await
                    .is_ok()
            } else {
                match kv.entry(&key).await {
                    Ok(None) => true,
                    Ok(Some(e)) => e.operation != Operation::Put,
                    Err(_) => false,
                }
            };
            if !dead {
                tracing::info!(%gateway, "gateway silent here but its heartbeat moved (or KV failed); not burying it");
                return None;
            }
            tracing::info!(%gateway, devices = devices.len(), "gateway heartbeat timed out; burying it");
            metrics.gateways_buried.inc();
            let deletes = devices.iter().map(|(user, rev)| {
                kv.delete_expect_revision(subject::device_key(user, &gateway), Some(*rev))
            });
            let _ = futures::future::join_all(deletes).await;
            None
        }
        Action::Publish {
            user,
            entry,
            expected,
        } => {
            let key = subject::user_presence_key(&user);
            let value = Bytes::from(serde_json::to_vec(&entry).unwrap_or_default());
            let written = match expected {
                Some(rev) => fabric
                    .presence
                    .update(&key, value, rev)
                    .await
                    .map_err(|e| e.to_string()),
                None => fabric
                    .presence
                    .create(&key, value)
                    .await
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(rev) => {
                    let kind = if entry.online { "online" } else { "offline" };
                    metrics.transition(kind);
                    tracing::debug!(%user, online = entry.online, "presence changed");
                    publish(fabric, members, &user, entry).await;
                    Some((user, Some((entry, rev))))
                }
                Err(e) => {
                    // Another presence service won this transition (or KV failed): read what won.
                    metrics.conflicts.inc();
                    tracing::debug!(%user, error = %e, "presence write lost");
                    match fabric.presence.entry(key).await {
                        Ok(Some(e)) if e.operation == Operation::Put => {
                            let stored = serde_json::from_slice(&e.value)
                                .ok()
                                .map(|v| (v, e.revision));
                            Some((user, stored))
                        }
                        Ok(_) => Some((user, None)),
                        Err(_) => None,
                    }
                }
            }
        }
    }
}

/// Publishes `user`'s new presence on every conversation they are in.
async fn publish(fabric: &Fabric, members: &Memberships, user: &UserId, entry: PresenceEntry) {
    for conv in members.of(user) {
        let event = EphemeralEvent::Presence {
            conv: conv.clone(),
            user: user.clone(),
            online: entry.online,
            last_seen: entry.last_seen,
        };
        let payload = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
        let subject = subject::ephemeral_subject(conv, Ephemeral::Presence);
        if let Err(e) = fabric.client.publish(subject, payload).await {
            tracing::warn!(%user, error = %e, "presence event not published");
        }
    }
}
