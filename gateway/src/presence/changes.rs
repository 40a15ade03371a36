//! The device-key change queue between connections and the key writer: bounded, and coalesced
//! per user.
//!
//! Only the latest state of a user's device key matters, and that state is the connection count
//! itself (the writer reads it when it takes the user), so the queue holds *which* users changed,
//! each at most once, in the order they first changed. A user who connects and disconnects a
//! thousand times while the writer is busy is one entry. Past [`CAPACITY`] distinct users the
//! entries are dropped for one "everyone" entry: the writer then compares every connected user
//! with what it wrote and rewrites every key (as after a burial), which costs writes but never
//! memory, and never loses a change.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chatfabric_nats::UserId;
use tokio::sync::Notify;

/// Distinct users queued before the queue collapses into one "everyone" entry.
pub(super) const CAPACITY: usize = 65_536;

/// What is known about a queued user's key in the bucket; a user queued twice keeps the
/// greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Key {
    /// As the writer last wrote it: only the connection count changed.
    AsWritten,
    /// Deleted by someone else: written again if the user is connected, even if the writer
    /// wrote it before.
    Gone,
    /// Not known: a write of ours failed, or the key is present while the user is not connected
    /// here. The current state is written whatever the writer wrote before.
    Unknown,
}

/// What the writer takes from the queue.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// These users' keys may be out of date, with what is known about each.
    Users(Vec<(UserId, Key)>),
    /// Every key may be out of date, and may be gone: compare and write them all.
    Everyone,
}

#[derive(Debug, Default)]
struct Pending {
    /// Users in the order they first changed.
    order: VecDeque<UserId>,
    /// The same users, with what is known about their key.
    known: HashMap<UserId, Key>,
    /// Set instead of the users when they overflowed, or when every key is gone.
    everyone: bool,
}

/// The queue. Pushing never waits and never allocates past [`CAPACITY`] users.
#[derive(Debug)]
pub(super) struct Changes {
    pending: Mutex<Pending>,
    ready: Notify,
    capacity: usize,
}

impl Changes {
    /// An empty queue of at most `capacity` distinct users.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            pending: Mutex::default(),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Plain data; no code panics while holding it.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `user`'s connection count went between 0 and 1 ([`Key::AsWritten`]), or their key may
    /// not be what the writer wrote.
    pub(super) fn user(&self, user: &UserId, key: Key) {
        {
            let mut p = self.lock();
            if p.everyone {
                return;
            }
            if let Some(known) = p.known.get_mut(user) {
                *known = (*known).max(key);
                return;
            }
            if p.order.len() >= self.capacity {
                *p = Pending {
                    everyone: true,
                    ..Pending::default()
                };
            } else {
                p.order.push_back(user.clone());
                p.known.insert(user.clone(), key);
            }
        }
        self.ready.notify_one();
    }

    /// Every key may be gone (the presence service buried this gateway, or deletions passed
    /// while nobody watched).
    pub(super) fn everyone(&self) {
        *self.lock() = Pending {
            everyone: true,
            ..Pending::default()
        };
        self.ready.notify_one();
    }

    /// Takes up to `max` users (or "everyone"), waiting until there is something.
    pub(super) async fn next(&self, max: usize) -> Due {
        loop {
            if let Some(due) = self.try_next(max) {
                return due;
            }
            self.ready.notified().await;
        }
    }

    fn try_next(&self, max: usize) -> Option<Due> {
        let mut p = self.lock();
        if std::mem::take(&mut p.everyone) {
            return Some(Due::Everyone);
        }
        if p.order.is_empty() {
            return None;
        }
        let n = p.order.len().min(max.max(1));
        let users: Vec<UserId> = p.order.drain(..n).collect();
        let due = users
            .into_iter()
            .map(|u| {
                let key = p.known.remove(&u).unwrap_or(Key::AsWritten);
                (u, key)
            })
            .collect();
        if p.order.is_empty() {
            // Give back what a burst allocated.
            p.order.shrink_to(16);
            p.known.shrink_to(16);
        }
        if !p.order.is_empty() {
            self.ready.notify_one();
        }
        Some(Due::Users(due))
    }

    /// What is queued now, without waiting.
    #[cfg(test)]
    pub(super) fn try_next_for_test(&self) -> Option<Due> {
        self.try_next(usize::MAX)
    }

    /// Distinct users queued.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(i: usize) -> UserId {
        UserId::new(format!("u{i}")).unwrap()
    }

    #[tokio::test]
    async fn changes_of_one_user_coalesce_in_first_change_order() {
        let q = Changes::new(8);
        for _ in 0..1000 {
            q.user(&user(1), Key::AsWritten);
            q.user(&user(2), Key::AsWritten);
            q.user(&user(3), Key::Gone);
        }
        q.user(&user(1), Key::Gone);
        q.user(&user(1), Key::AsWritten);
        q.user(&user(3), Key::Unknown);
        q.user(&user(3), Key::Gone);
        assert_eq!(q.len(), 3);
        assert_eq!(
            q.next(10).await,
            Due::Users(vec![
                (user(1), Key::Gone),
                (user(2), Key::AsWritten),
                (user(3), Key::Unknown)
            ])
        );
        assert!(q.try_next(10).is_none());
    }

    #[tokio::test]
    async fn past_capacity_the_queue_is_one_everyone_entry() {
        let q = Changes::new(4);
        for i in 0..100_000 {
            q.user(&user(i), Key::AsWritten);
        }
        assert_eq!(q.len(), 0, "no per-user entries are kept past the bound");
        assert_eq!(q.next(10).await, Due::Everyone);
        assert!(q.try_next(10).is_none());
        q.user(&user(7), Key::AsWritten);
        assert_eq!(
            q.next(10).await,
            Due::Users(vec![(user(7), Key::AsWritten)])
        );
    }

    #[tokio::test]
    async fn users_are_taken_in_batches_and_wake_the_writer() {
        let q = std::sync::Arc::new(Changes::new(100));
        let writer = tokio::spawn({
            let q = q.clone();
            async move { q.next(2).await }
        });
        tokio::task::yield_now().await;
        for i in 0..3 {
            q.user(&user(i), Key::AsWritten);
        }
        let first = writer.await.unwrap();
        assert!(matches!(first, Due::Users(ref u) if !u.is_empty() && u.len() <= 2));
        let Due::Users(first) = first else {
            unreachable!()
        };
        let Due::Users(rest) = q.next(2).await else {
            panic!("expected users")
        };
        let all: Vec<UserId> = first.into_iter().chain(rest).map(|(u, _)| u).collect();
        assert_eq!(all, vec![user(0), user(1), user(2)]);
    }
}
