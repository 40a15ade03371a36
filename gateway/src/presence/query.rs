//! The `presence` query: whether a user is online, from the presence service's `p.<user>` key.

use async_nats::jetstream::kv;
use chatfabric_nats::subject;
use chatfabric_nats::wire::{now_ms, PresenceEntry};
use chatfabric_nats::UserId;

/// A user's presence as a query answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// Whether any of their devices is connected.
    pub online: bool,
    /// Online: now. Offline: when they were last online. `None` if never seen.
    pub last_seen: Option<u64>,
}

impl Presence {
    /// The answer for a stored entry (`None`: the user was never seen).
    pub fn of(entry: Option<PresenceEntry>) -> Self {
        let online = entry.as_ref().is_some_and(|e| e.online);
        let last_seen = if online {
            Some(now_ms())
        } else {
            entry.map(|e| e.last_seen)
        };
        Self { online, last_seen }
    }
}

/// `user`'s presence in the bucket. The caller checked that the asker may know it.
pub async fn lookup(kv: &kv::Store, user: &UserId) -> Result<Presence, kv::EntryError> {
    let entry = kv
        .get(subject::user_presence_key(user))
        .await?
        .and_then(|v| serde_json::from_slice(&v).ok());
    Ok(Presence::of(entry))
}
