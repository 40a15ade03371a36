//! Payloads stored in JetStream and in KV, shared by every role.
//!
//! A stored message is JSON ([`StoredMessage`]); its stream sequence is not part of the payload but
//! travels in the `Nats-Sequence` header of republished copies and in the stream metadata of direct
//! gets. Readers must accept unknown fields, so new fields can be added without a flag day.

use serde::{Deserialize, Serialize};

use crate::{ConvId, UserId};

/// Header JetStream uses to deduplicate publishes within the stream's duplicate window.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header stamped by `republish`: the message's stream sequence.
pub const SEQUENCE_HEADER: &str = "Nats-Sequence";
/// Header stamped by `republish`: the previous sequence on the same subject (same conversation), or 0.
pub const LAST_SEQUENCE_HEADER: &str = "Nats-Last-Sequence";

/// The longest client-chosen message id, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// A chat message as stored in the conversation's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Server-assigned unique id (UUIDv7, time ordered).
    pub id: String,
    /// The conversation it belongs to.
    pub conv: ConvId,
    /// Who sent it; stamped by the gateway or ingest service from the authenticated identity.
    pub sender: UserId,
    /// The sender's idempotency key.
    pub client_id: String,
    /// Server time at acceptance, milliseconds since the Unix epoch.
    pub ts: u64,
    /// The message text.
    pub body: String,
    /// Set when the application backend posted it through the server API, absent when the
    /// sender sent it themselves: a message posted on a user's behalf is never indistinguishable
    /// from their own send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
}

/// Who put a message into a conversation when it was not its sender's own client or bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The application backend, on behalf of the user named as `sender`.
    Backend,
    /// A named service of the application; `sender` is its service id (`svc_<name>`, see
    /// [`crate::id::SERVICE_PREFIX`]), which no user can have.
    Service,
}

impl Via {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backend => "backend",
            Self::Service => "service",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "backend" => Some(Self::Backend),
            "service" => Some(Self::Service),
            _ => None,
        }
    }
}

impl StoredMessage {
    /// The `Nats-Msg-Id` that makes a retried send land once: scoped to conversation and sender, so
    /// two users (or one user in two conversations) may reuse a client id.
    pub fn dedupe_id(&self) -> String {
        dedupe_id(&self.conv, &self.sender, &self.client_id, self.via)
    }
}

/// See [`StoredMessage::dedupe_id`]. A post through the server API on a user's behalf gets its
/// own id space (after a space, which no client id holds), so the backend's idempotency keys
/// never collide with the user's own client ids.
pub fn dedupe_id(conv: &ConvId, sender: &UserId, client_id: &str, via: Option<Via>) -> String {
    match via {
        None => format!("{conv}:{sender}:{client_id}"),
        Some(via) => format!("{conv}:{sender}:{client_id} {}", via.as_str()),
    }
}

/// A user's disconnect, `d.<user>` in [`crate::subject::USERS_BUCKET`], written by the server
/// API and watched by every gateway: each closes the user's connections that were open at `at`
/// and refuses tokens issued before `tokens_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDisconnect {
    /// When the disconnect was asked for, ms since the Unix epoch.
    pub at: u64,
    /// Tokens whose `iat` is before this (seconds since the epoch) are refused from now on; a
    /// token without `iat` is refused too. None: tokens stay valid (a plain disconnect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_before: Option<u64>,
}

/// Whether `id` is an acceptable client message id: 1 to [`MAX_CLIENT_ID_LEN`] bytes of printable
/// ASCII without spaces.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The kind of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    /// Two users; membership is fixed.
    Direct,
    /// Any number of users; members may add others, leave, and the creator may remove members.
    Group,
}

/// A conversation's description, stored under `c.<conv>` in [`crate::subject::CONVS_BUCKET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationInfo {
    /// The conversation's id.
    pub conv: ConvId,
    /// Direct or group.
    pub kind: ConvKind,
    /// Who created it.
    pub created_by: UserId,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: u64,
    /// Optional display title (groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// One membership, stored under `m.<conv>.<user>`. Deleting the key removes the member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Who added this member.
    pub added_by: UserId,
    /// When, milliseconds since the Unix epoch.
    pub added_at: u64,
}

/// A user's published presence, `user.<user>` in the presence bucket. Written only by the presence
/// service, with compare-and-set, so each transition has exactly one writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// Whether any of the user's devices is connected to a live gateway.
    pub online: bool,
    /// When online: since when. When offline: when the user was last online. Ms since the epoch.
    pub last_seen: u64,
}

/// A read cursor, `r.<conv>.<user>` in the receipts bucket. Only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadCursor {
    /// The user has read every message of the conversation with `seq <= seq`.
    pub seq: u64,
    /// When it was set, ms since the epoch.
    pub ts: u64,
}

/// An ephemeral event as published on `chat.eph.<conv>.<kind>`: exactly the frame clients get
/// (gateways parse and re-encode it, so nothing unvalidated reaches a client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum EphemeralEvent {
    /// A member went online or offline.
    Presence {
        /// The conversation the event is delivered in.
        conv: ConvId,
        /// Who.
        user: UserId,
        /// The new state.
        online: bool,
        /// See [`PresenceEntry::last_seen`].
        last_seen: u64,
    },
    /// A member started or stopped typing.
    Typing {
        /// The conversation.
        conv: ConvId,
        /// Who.
        user: UserId,
        /// `start` or `stop`.
        state: TypingState,
        /// A `start` counts as stopped after this many ms without another `start`.
        expires_in: u64,
    },
    /// A member's read cursor moved forward.
    Read {
        /// The conversation.
        conv: ConvId,
        /// Who.
        user: UserId,
        /// The new cursor: everything up to and including it is read.
        seq: u64,
    },
}

impl EphemeralEvent {
    /// The conversation the event belongs to.
    pub fn conv(&self) -> &ConvId {
        match self {
            Self::Presence { conv, .. } | Self::Typing { conv, .. } | Self::Read { conv, .. } => {
                conv
            }
        }
    }
}

/// Typing states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypingState {
    /// Started (or still) typing.
    Start,
    /// Stopped typing.
    Stop,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
