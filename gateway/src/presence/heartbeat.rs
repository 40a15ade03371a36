//! The gateway's liveness in the presence bucket: the heartbeat key, and the watch that puts
//! back device keys deleted while their users are still connected here.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, UpdateErrorKind};
use bytes::Bytes;
use chatfabric_nats::subject;
use chatfabric_nats::wire::now_ms;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::changes::Key;
use super::devices::Devices;
use crate::metrics::Metrics;

/// Watches this gateway's own device keys: restores any deleted while its user is connected here,
/// and deletes any present while its user is not (a delete of ours that a replica lost, or that
/// failed while nobody could tell; the watch's start lists every key). The writer's own writes
/// come back too; the writer drops the deletions as the user is gone, and a put that arrives
/// after its user left costs one more delete.
pub(super) async fn guard_keys(
    devices: Arc<Devices>,
    kv: kv::Store,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let pattern = format!("dev.*.{}", devices.gateway());
    while !shutdown.is_cancelled() {
        match kv.watch_with_history(&pattern).await {
            Ok(mut watch) => {
                // Deletions may have passed while there was no watch.
                devices.changes.everyone();
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
                    let Some(subject::PresenceKey::Device(user, _)) =
                        subject::parse_presence_key(&entry.key)
                    else {
                        continue;
                    };
                    if entry.operation != kv::Operation::Put {
                        metrics.presence_reasserts.inc();
                        devices.changes.user(&user, Key::Gone);
                    } else if !devices.is_connected(&user) {
                        devices.changes.user(&user, Key::Unknown);
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

pub(super) async fn heartbeat(
    devices: Arc<Devices>,
    kv: kv::Store,
    every: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let key = subject::gateway_key(devices.gateway());
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
                        devices.changes.everyone();
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
                tracing::warn!(gateway = %devices.gateway(), "declared dead by presence; re-asserting connected users");
                metrics.presence_reasserts.inc();
                match kv.put(&key, value()).await {
                    Ok(rev) => {
                        revision = Some(rev);
                        devices.changes.everyone();
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
