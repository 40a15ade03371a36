//! The users connected to this gateway and the one task that mirrors them into the presence
//! bucket as device keys.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use chatfabric_nats::subject;
use chatfabric_nats::wire::now_ms;
use chatfabric_nats::{Fabric, UserId};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::changes::{Changes, Due, Key, CAPACITY};
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
                self.devices.changes.user(&self.user, Key::AsWritten);
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
            self.changes.user(user, Key::AsWritten);
        }
        DeviceGuard {
            devices: self.clone(),
            user: user.clone(),
        }
    }

    /// Whether `user` has a connection here.
    pub(super) fn is_connected(&self, user: &UserId) -> bool {
        self.lock().contains_key(user)
    }

    /// The key writes that bring the bucket to the connection counts, given the keys the
    /// writer believes present (`written`, updated as if the writes succeed).
    fn writes(&self, due: Due, written: &mut HashSet<UserId>) -> Vec<(UserId, bool)> {
        let counts = self.lock();
        let writes: Vec<(UserId, bool)> = match due {
            Due::Users(users) => users
                .into_iter()
                .filter_map(|(user, key)| {
                    let up = counts.contains_key(&user);
                    let stale = match key {
                        Key::AsWritten => up != written.contains(&user),
                        Key::Gone => {
                            written.remove(&user);
                            up
                        }
                        Key::Unknown => true,
                    };
                    stale.then_some((user, up))
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

/// How long a user whose key write failed waits before the writer tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Writes device keys as the counts change, pipelined (it does not wait for each
/// acknowledgement before sending the next); a user's writes go out in the order of its changes.
/// A write that fails or is not acknowledged (JetStream without a leader, a lost connection) is
/// tried again after [`RETRY_AFTER`] with the user's state then, until one is acknowledged: a
/// lost delete would otherwise leave a disconnected user online for as long as this gateway
/// lives.
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
    // Users whose last write failed, due again at `retry_at`: at most one entry per user.
    let mut failed: HashSet<UserId> = HashSet::new();
    let retry_at = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry_at);
    let value = || Bytes::from(format!("{{\"since\":{}}}", now_ms()));
    loop {
        let due = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some((user, done)) = acks.next(), if !acks.is_empty() => {
                if let Err(e) = done {
                    metrics.presence_write_errors.inc();
                    tracing::warn!(%user, error = %e, "device key write not acknowledged; retrying");
                    if failed.is_empty() {
                        retry_at.as_mut().reset(Instant::now() + RETRY_AFTER);
                    }
                    failed.insert(user);
                }
                continue;
            }
            _ = &mut retry_at, if !failed.is_empty() => {
                for user in failed.drain() {
                    devices.changes.user(&user, Key::Unknown);
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
            let ack = async move {
                let done = match sent {
                    Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (user, done)
            };
            acks.push(ack);
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
        devices.changes.user(&user("ann"), Key::Gone);
        devices.changes.user(&user("bob"), Key::Gone);
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

    #[test]
    fn a_key_in_doubt_is_written_again_whatever_was_written() {
        let devices = Arc::new(Devices::new());
        let mut written = HashSet::new();
        let ann = devices.connect(&user("ann"));
        due_writes(&devices, &mut written);
        drop(ann);
        assert_eq!(
            due_writes(&devices, &mut written),
            vec![(user("ann"), false)]
        );
        // The delete failed, or the key turned up again: delete it again, and again.
        for _ in 0..2 {
            devices.changes.user(&user("ann"), Key::Unknown);
            assert_eq!(
                due_writes(&devices, &mut written),
                vec![(user("ann"), false)]
            );
        }
        // A put in doubt while connected is put again.
        let _ann = devices.connect(&user("ann"));
        due_writes(&devices, &mut written);
        devices.changes.user(&user("ann"), Key::Unknown);
        assert_eq!(
            due_writes(&devices, &mut written),
            vec![(user("ann"), true)]
        );
    }
}
