//! [`Roster`]: this gateway's open connections (WebSockets and event streams) per user, so a
//! disconnect can close them all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use chatfabric_nats::wire::{now_ms, UserDisconnect};
use chatfabric_nats::UserId;

use crate::auth::Identity;
use crate::outbox::Outbox;

/// One open connection.
struct Entry {
    conn: u64,
    /// When it was opened, ms since the epoch (compared with a disconnect's time).
    opened_at: u64,
    issued_at: Option<u64>,
    /// Kicked to close it; weak, so the roster never keeps a closed connection's queue alive.
    outbox: Weak<Outbox>,
}

/// The open connections of this gateway, per user.
pub struct Roster {
    users: Mutex<HashMap<UserId, Vec<Entry>>>,
    /// The close code a disconnected connection gets (the front ends' `DISCONNECTED`).
    code: u16,
}

/// Held by a connection while it is open; dropping it takes the connection off the roster.
pub struct Listed {
    roster: Arc<Roster>,
    user: UserId,
    conn: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        let mut users = self.roster.lock();
        if let Some(entries) = users.get_mut(&self.user) {
            entries.retain(|e| e.conn != self.conn);
            if entries.is_empty() {
                users.remove(&self.user);
            }
        }
    }
}

impl Roster {
    /// An empty roster whose disconnects close connections with `code`.
    pub fn new(code: u16) -> Arc<Self> {
        Arc::new(Self {
            users: Mutex::default(),
            code,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Vec<Entry>>> {
        // Plain data; no code panics while holding the lock.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists connection `conn` of `identity`'s user, closed through `outbox`, until the guard
    /// drops.
    pub fn list(self: &Arc<Self>, identity: &Identity, conn: u64, outbox: &Arc<Outbox>) -> Listed {
        self.lock()
            .entry(identity.user.clone())
            .or_default()
            .push(Entry {
                conn,
                opened_at: now_ms(),
                issued_at: identity.issued_at,
                outbox: Arc::downgrade(outbox),
            });
        Listed {
            roster: self.clone(),
            user: identity.user.clone(),
            conn,
        }
    }

    /// Closes `user`'s connections that were open at the disconnect's time or hold a token it
    /// revokes; returns how many.
    pub fn disconnect(&self, user: &UserId, disconnect: &UserDisconnect) -> usize {
        let users = self.lock();
        let Some(entries) = users.get(user) else {
            return 0;
        };
        let revoked = |e: &Entry| {
            disconnect
                .tokens_before
                .is_some_and(|before| e.issued_at.is_none_or(|iat| iat < before))
        };
        let mut closed = 0;
        for entry in entries {
            if entry.opened_at <= disconnect.at || revoked(entry) {
                if let Some(outbox) = entry.outbox.upgrade() {
                    outbox.kick(self.code);
                    closed += 1;
                }
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use prometheus_client::metrics::gauge::Gauge;

    fn identity(user: &str, issued_at: Option<u64>) -> Identity {
        Identity {
            user: UserId::new(user).unwrap(),
            expires_at: u64::MAX,
            issued_at,
        }
    }

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(8, 1024, Gauge::default()))
    }

    #[test]
    fn a_disconnect_closes_what_was_open_then_or_holds_a_revoked_token() {
        let roster = Roster::new(4003);
        let (old, fresh, bob) = (outbox(), outbox(), outbox());
        let _old = roster.list(&identity("alice", Some(100)), 1, &old);
        let _fresh = roster.list(&identity("alice", Some(200)), 2, &fresh);
        let _bob = roster.list(&identity("bob", None), 3, &bob);
        let alice = UserId::new("alice").unwrap();
        // Both opened after `at`: only the connection with the revoked token closes.
        let revoke = UserDisconnect {
            at: 0,
            tokens_before: Some(150),
        };
        assert_eq!(roster.disconnect(&alice, &revoke), 1);
        assert_eq!(old.kicked().now_or_never(), Some(4003));
        assert_eq!(fresh.kicked().now_or_never(), None);
        // A plain disconnect now closes every connection open at its time, and nobody else's.
        let now = UserDisconnect {
            at: now_ms(),
            tokens_before: None,
        };
        assert_eq!(roster.disconnect(&alice, &now), 2);
        assert_eq!(fresh.kicked().now_or_never(), Some(4003));
        assert_eq!(bob.kicked().now_or_never(), None);
    }

    #[test]
    fn a_closed_connection_leaves_the_roster() {
        let roster = Roster::new(4003);
        let out = outbox();
        let listed = roster.list(&identity("alice", None), 1, &out);
        drop(listed);
        let all = UserDisconnect {
            at: u64::MAX,
            tokens_before: None,
        };
        assert_eq!(roster.disconnect(&UserId::new("alice").unwrap(), &all), 0);
        assert!(roster.lock().is_empty());
    }
}
