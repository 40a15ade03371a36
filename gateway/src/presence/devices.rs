//! The users connected to this gateway and the one task that mirrors them into the presence
//! bucket as device keys.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use bytes::Bytes;
use chatfabric_nats::subject;
use chatfabric_nats::wire::now_ms;
use chatfabric_nats::{Fabric, UserId};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::changes::{Changes, Due, CAPACITY};
use crate::metrics::Metrics;

/// The users connected to this gateway, mirrored into the presence bucket.
pub(crate) struct Devices {
    /// This process's gateway id (random per start).
    gateway: String,
    /// Connections per user; changes between 0 and 1 are queued for the writer.
    counts: Mutex<HashMap<UserId, usize>>,
    /// Users whose key may be out of date, to the writer; bounded and coalesced per user, so a
    /// connection never waits and no churn can grow it.
    pub(super) changes: Changes,
}

/// Held by a connection while it is open; dropping it counts the connection out.
pub(crate) struct DeviceGuard {
    devices: Arc<Devices>,
    user: UserId,
}

impl Drop for DeviceGuard {
    fn drop(&mut self) {
        let mut counts = self.devices.lock();
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
                self.devices.changes.user(&self.user, false);
            }
        }
    }
}

impl Devices {
    /// No connection yet, under a fresh random gateway id.
    pub(super) fn new() -> Self {
        Self {
            gateway: uuid::Uuid::now_v7().simple().to_string(),
            counts: Mutex::new(HashMap::new()),
            changes: Changes::new(CAPACITY),
        }
    }

    /// This gateway's id in the presence bucket.
    pub(crate) fn gateway(&self) -> &str {
        &self.gateway
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, usize>> {
        // Plain counts; no code panics while holding the lock.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a connection of `user` in until the guard drops.
    pub(crate) fn connect(self: &Arc<Self>, user: &UserId) -> DeviceGuard {
        let mut counts = self.lock();
        let n = counts.entry(user.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.changes.user(user, false);
        }
        DeviceGuard {
            devices: self.clone(),
            user: user.clone(),
        }
    }

    /// The key writes that bring the bucket to the connection counts, given the keys the
    /// writer believes present (`written`, updated as if the writes succeed).
    fn writes(&self, due: Due, written: &mut HashSet<UserId>) -> Vec<(UserId, bool)> {
        let counts = self.lock();
        let writes: Vec<(UserId, bool)> = match due {
            Due::Users(users) => users
                .into_iter()
                .filter_map(|(user, gone)| {
                    if gone {
                        written.remove(&user);
                    }
                    let up = counts.contains_key(&user);
                    (up != written.contains(&user)).then_some((user, up))
                })
                .collect(),
            // Any key may be gone: write every connected user's, delete every other we wrote.
            Due::Everyone => counts
                .keys()
                .map(|u| (u.clone(), true))
                .chain(
                    written
                        .iter()
                        .filter(|u| !counts.contains_key(*u))
                        .map(|u| (u.clone(), false)),
                )
                .collect(),
        };
        for (user, up) in &writes {
            if *up {
                written.insert(user.clone());
            } else {
                written.remove(user);
            }
        }
        writes
    }
}

/// Device-key writes in flight before the writer waits for acknowledgements.
const IN_FLIGHT: usize = 256;

/// Users taken from the queue at once.
const BATCH: usize = 64;

/// Writes device keys as the counts change, pipelined (it does not wait for each
/// acknowledgement before sending the next); a user's writes go out in the order of its changes.
pub(super) async fn writer(
    devices: Arc<Devices>,
    fabric: Fabric,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let kv = &fabric.presence;
    let prefix = kv.put_prefix.clone().unwrap_or_else(|| kv.prefix.clone());
    let mut acks = FuturesUnordered::new();
    // The keys this writer put and has not deleted: at most one per user connected here.
    let mut written = HashSet::new();
    let value = || Bytes::from(format!("{{\"since\":{}}}", now_ms()));
    loop {
        let due = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(done) = acks.next(), if !acks.is_empty() => {
                if let Err(e) = done {
                    metrics.presence_write_errors.inc();
                    tracing::warn!(error = %e, "device key write not acknowledged");
                }
                continue;
            }
            due = devices.changes.next(BATCH), if acks.len() < IN_FLIGHT => due,
        };
        for (user, up) in devices.writes(due, &mut written) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    /// What the writer would write for what is queued now.
    fn due_writes(devices: &Devices, written: &mut HashSet<UserId>) -> Vec<(UserId, bool)> {
        let due = devices.changes.try_next_for_test();
        due.map(|d| devices.writes(d, written)).unwrap_or_default()
    }

    #[test]
    fn churn_while_the_writer_is_busy_writes_only_the_latest_state() {
        let devices = Arc::new(Devices::new());
        let mut written = HashSet::new();
        let first = devices.connect(&user("ann"));
        assert_eq!(
            due_writes(&devices, &mut written),
            vec![(user("ann"), true)]
        );
        // A hundred reconnects, then a second device: the key is up and stays up.
        for _ in 0..100 {
            drop(devices.connect(&user("ann")));
        }
        let second = devices.connect(&user("ann"));
        drop(first);
        assert_eq!(due_writes(&devices, &mut written), vec![]);
        // Bob comes and goes before the writer looks: nothing to write for him.
        drop(devices.connect(&user("bob")));
        drop(second);
        assert_eq!(
            due_writes(&devices, &mut written),
            vec![(user("ann"), false)]
        );
        assert!(written.is_empty());
    }

    #[test]
    fn a_key_deleted_behind_our_back_is_written_again_while_connected() {
        let devices = Arc::new(Devices::new());
        let mut written = HashSet::new();
        let _ann = devices.connect(&user("ann"));
        let bob = devices.connect(&user("bob"));
        due_writes(&devices, &mut written);
        drop(bob);
        due_writes(&devices, &mut written);
        // Both keys deleted by someone else (bob's by our own delete): only ann's comes back.
        devices.changes.user(&user("ann"), true);
        devices.changes.user(&user("bob"), true);
        assert_eq!(
            due_writes(&devices, &mut written),
            vec![(user("ann"), true)]
        );
        // Buried: every connected user's key again, and a delete for every other we wrote.
        written.insert(user("carl"));
        devices.changes.everyone();
        assert_eq!(
            due_writes(&devices, &mut written),
            vec![(user("ann"), true), (user("carl"), false)]
        );
    }
}
