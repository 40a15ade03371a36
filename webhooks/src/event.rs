//! The events POSTed to receivers, and their ids.
//!
//! # Stable ids
//!
//! An event's id is derived from what JetStream keeps, never from this process's memory, so a
//! crash and redelivery rebuild the same id for the same content:
//!
//! - `message.offline`: SHA-256 of `message.offline`, the conversation, the recipient and the
//!   stream sequences of the first and last message the event covers. The same window content
//!   gives the same id; a window regrouped after a crash (more or fewer messages) gets another id,
//!   and its messages are notified again rather than lost.
//! - `member.added` / `member.removed`: SHA-256 of the type, conversation, user and the revision of
//!   the membership key (the KV stream's sequence), unique per change.
//!
//! The id is `evt_` and 32 hex digits (128 bits of the digest).

use bytes::Bytes;
use chatfabric_nats::{ConvId, UserId};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::sign::hex;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Messages were stored in a conversation while a member was offline.
    MessageOffline,
    /// A member was added to a conversation.
    MemberAdded,
    /// A member was removed from (or left) a conversation.
    MemberRemoved,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 3] = [Self::MessageOffline, Self::MemberAdded, Self::MemberRemoved];

    /// The event's `type` and `Chatfabric-Event-Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageOffline => "message.offline",
            Self::MemberAdded => "member.added",
            Self::MemberRemoved => "member.removed",
        }
    }
}

/// One stored message as an event shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    /// Stream sequence (the conversation's cursor, as clients see it).
    pub seq: u64,
    /// The message's server id.
    pub id: String,
    /// Who sent it.
    pub sender: UserId,
    /// Server time at acceptance, ms since the epoch.
    pub ts: u64,
    /// The text.
    pub body: String,
}

/// What every event starts with (flattened into it).
#[derive(Debug, Clone, Serialize)]
pub struct Head<'a> {
    /// Event id (see the module doc).
    pub id: &'a str,
    /// The event type, e.g. `message.offline`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When this process built the event, ms since the epoch.
    pub created_at: u64,
    /// The conversation.
    pub conv: &'a ConvId,
    /// The member the event is about (for `message.offline`: the one to notify).
    pub user: &'a UserId,
}

/// `message.offline`: `count` messages (`first_seq..=last_seq`) arrived in `conv` while `user`
/// was offline; `messages` are the last few of them, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct OfflineMessages<'a> {
    /// Id, type, time, conversation and the offline member to notify.
    #[serde(flatten)]
    pub head: Head<'a>,
    /// How many messages the event covers.
    pub count: u64,
    /// Sequence of the first of them.
    pub first_seq: u64,
    /// Sequence of the last of them.
    pub last_seq: u64,
    /// The last few (at most `--last-messages`), oldest first.
    pub messages: Vec<&'a MessageView>,
}

/// `member.added` / `member.removed`.
#[derive(Debug, Clone, Serialize)]
pub struct MemberChange<'a> {
    /// Id, type (`member.added` or `member.removed`), time, conversation and the member.
    #[serde(flatten)]
    pub head: Head<'a>,
    /// Added: who added them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_by: Option<&'a UserId>,
    /// Added: when, ms since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_at: Option<u64>,
    /// Revision of the membership key that changed (orders changes of one membership).
    pub revision: u64,
}

/// The id of a `message.offline` event.
pub fn offline_id(conv: &ConvId, user: &UserId, first_seq: u64, last_seq: u64) -> String {
    id_of(&[
        EventKind::MessageOffline.as_str(),
        conv.as_str(),
        user.as_str(),
        &first_seq.to_string(),
        &last_seq.to_string(),
    ])
}

/// The id of a membership event.
pub fn member_id(kind: EventKind, conv: &ConvId, user: &UserId, revision: u64) -> String {
    id_of(&[
        kind.as_str(),
        conv.as_str(),
        user.as_str(),
        &revision.to_string(),
    ])
}

fn id_of(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        // Ids never contain NUL: the separator keeps ("ab","c") apart from ("a","bc").
        h.update([0u8]);
    }
    format!("evt_{}", hex(&h.finalize()[..16]))
}

/// A serialised event, ready to be signed and POSTed.
pub fn encode<T: Serialize>(event: &T) -> Bytes {
    // Serialising these plain structs cannot fail.
    Bytes::from(serde_json::to_vec(event).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let (c, u) = (ConvId::new("room").unwrap(), UserId::new("bob").unwrap());
        let a = offline_id(&c, &u, 1, 3);
        assert_eq!(a, offline_id(&c, &u, 1, 3));
        assert_eq!(a.len(), 4 + 32);
        assert_ne!(a, offline_id(&c, &u, 1, 4));
        assert_ne!(
            member_id(EventKind::MemberAdded, &c, &u, 7),
            member_id(EventKind::MemberRemoved, &c, &u, 7)
        );
        // Receivers store these ids: the derivation and the examples of docs/WEBHOOKS.md hold.
        let room = ConvId::new("room-1").unwrap();
        assert_eq!(
            offline_id(&room, &u, 41, 44),
            "evt_5e4f25ae5a3f380b6704002545a8bb92"
        );
        let carol = UserId::new("carol").unwrap();
        assert_eq!(
            member_id(EventKind::MemberAdded, &room, &carol, 17),
            "evt_003337422c27f9ad32867c4fd4c220f3"
        );
    }
}
