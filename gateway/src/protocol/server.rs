//! Frames to clients: [`ServerFrame`] replies, and the `msg`, `history` and event frames the
//! fan-out and the history service encode once per message or page.

use std::collections::BTreeMap;

use chatfabric_nats::wire::{ConvKind, Via};
use chatfabric_nats::{ConvId, UserId};
use serde::{Deserialize, Serialize};

use super::codes::ErrorCode;
use super::ops::ServerOp;

/// A conversation as listed to a client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConversationView {
    /// Its id.
    pub conv: ConvId,
    /// Direct or group.
    pub kind: ConvKind,
    /// Group title, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// A frame to a client. (`msg` frames are encoded by [`encode_msg`], once per message per gateway.)
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Authentication succeeded.
    Ready {
        /// The authenticated user.
        user: UserId,
        /// This connection's id (for support and logs).
        conn: u64,
        /// Echo of the request's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A subscription is live; `msg` frames with `seq` > `cursor` follow, gap-free.
    Subscribed {
        /// The conversation.
        conv: ConvId,
        /// The position the subscription starts after.
        cursor: u64,
        /// Echo of the request's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A subscription ended: on request, or because the user was removed from the conversation.
    Unsubscribed {
        /// The conversation.
        conv: ConvId,
        /// `requested` or `removed`.
        reason: String,
        /// Echo of the request's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A message was stored.
    Ack {
        /// The conversation.
        conv: ConvId,
        /// The sender's idempotency key.
        client_id: String,
        /// The message's cursor in its conversation.
        seq: u64,
        /// True when this `client_id` had been stored before (a retry); `seq` is the original's.
        duplicate: bool,
    },
    /// A conversation was created (or, for a direct one, already existed).
    Conversation {
        /// The conversation.
        conversation: ConversationView,
        /// Its members.
        members: Vec<UserId>,
        /// Echo of the request's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A page of the caller's conversations.
    Conversations {
        /// Conversations, ordered by id.
        conversations: Vec<ConversationView>,
        /// Set when there may be more: ask again with `after` = this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<ConvId>,
        /// Echo of the request's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A conversation's members.
    Members {
        /// The conversation.
        conv: ConvId,
        /// Its members, sorted.
        members: Vec<UserId>,
        /// Echo of the request's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// Reply to a `presence` query.
    Presence {
        /// Whose presence.
        user: UserId,
        /// Whether any of their devices is connected.
        online: bool,
        /// Online: now. Offline: when they were last online. Absent if never seen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen: Option<u64>,
        /// Echo of the request's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// Reply to `read`: the caller's cursor afterwards (also announced to the members as an
    /// event of the same shape, without `ref`).
    Read {
        /// The conversation.
        conv: ConvId,
        /// The reader.
        user: UserId,
        /// The cursor (the stored one if it was already further).
        seq: u64,
        /// Echo of the request's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// Sent once after `ready`: unread messages per conversation of the user.
    Unread {
        /// Conversation -> messages after the user's read cursor.
        counts: BTreeMap<ConvId, u64>,
    },
    /// Reply to `ping`.
    Pong {
        /// Echo of the request's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A request failed; the connection stays open.
    Error {
        /// Machine-readable code (see [`ErrorCode`]).
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// Echo of the request's `ref`, or the `client_id` of a failed `send`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
}

impl ServerFrame {
    /// The frame's op (its name is [`ServerOp::name`]).
    pub fn op(&self) -> ServerOp {
        match self {
            Self::Ready { .. } => ServerOp::Ready,
            Self::Subscribed { .. } => ServerOp::Subscribed,
            Self::Unsubscribed { .. } => ServerOp::Unsubscribed,
            Self::Ack { .. } => ServerOp::Ack,
            Self::Conversation { .. } => ServerOp::Conversation,
            Self::Conversations { .. } => ServerOp::Conversations,
            Self::Members { .. } => ServerOp::Members,
            Self::Presence { .. } => ServerOp::Presence,
            Self::Read { .. } => ServerOp::Read,
            Self::Unread { .. } => ServerOp::Unread,
            Self::Pong { .. } => ServerOp::Pong,
            Self::Error { .. } => ServerOp::Error,
        }
    }
}

/// A stored message as delivered to clients. Borrowed fields: encoding never copies the body twice.
#[derive(Debug, Serialize)]
struct MsgFrame<'a> {
    op: &'static str,
    conv: &'a ConvId,
    seq: u64,
    prev: u64,
    id: &'a str,
    sender: &'a UserId,
    client_id: &'a str,
    ts: u64,
    body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<Via>,
}

/// A delivered message as a client parses it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Delivered {
    /// The conversation.
    pub conv: ConvId,
    /// The message's cursor.
    pub seq: u64,
    /// The cursor of the message delivered before it on this subscription (or the subscription's
    /// starting cursor): a client that holds `prev` has seen everything before `seq`.
    pub prev: u64,
    /// Server-assigned id.
    pub id: String,
    /// Who sent it.
    pub sender: UserId,
    /// The sender's idempotency key.
    pub client_id: String,
    /// Server timestamp, ms since the Unix epoch.
    pub ts: u64,
    /// The text.
    pub body: String,
    /// Set when the application posted it (`backend`: on the sender's behalf; `service`: the
    /// sender is a service), absent for the sender's own sends.
    #[serde(default)]
    pub via: Option<Via>,
}

/// Encodes a `msg` frame for `m` stored at `seq`.
pub fn encode_msg(m: &chatfabric_nats::wire::StoredMessage, seq: u64, prev: u64) -> String {
    let frame = MsgFrame {
        op: ServerOp::Msg.name(),
        conv: &m.conv,
        seq,
        prev,
        id: &m.id,
        sender: &m.sender,
        client_id: &m.client_id,
        ts: m.ts,
        body: &m.body,
        via: m.via,
    };
    // Serializing borrowed strings and integers cannot fail.
    serde_json::to_string(&frame).unwrap_or_default()
}

#[derive(Serialize)]
struct HistoryFrame<'a, M> {
    op: &'static str,
    conv: &'a ConvId,
    messages: &'a [M],
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

/// Encodes a `history` reply (also the body of the HTTP history endpoint).
///
/// `messages` are the page's messages, newest first, each serialized as PROTOCOL.md's history
/// message (`seq`, `id`, `sender`, `client_id`, `ts`, `body`): the history service's page type.
pub fn encode_history<M: Serialize>(
    conv: &ConvId,
    messages: &[M],
    reference: Option<&str>,
) -> String {
    let frame = HistoryFrame {
        op: ServerOp::History.name(),
        conv,
        messages,
        reference,
    };
    // Strings and integers only: serialization cannot fail.
    serde_json::to_string(&frame).unwrap_or_default()
}

/// Encodes an ephemeral event (presence, typing, read) as its client frame. The event was parsed
/// from NATS and is re-encoded here, so only well-formed frames reach clients.
pub fn encode_event(event: &chatfabric_nats::wire::EphemeralEvent) -> String {
    // Strings, integers and enums only: serialization cannot fail.
    serde_json::to_string(event).unwrap_or_default()
}

/// The page size of a history request without `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

/// Encodes a server frame.
pub fn encode(frame: &ServerFrame) -> String {
    // ServerFrame holds only strings, integers and enums: serialization cannot fail.
    serde_json::to_string(frame).unwrap_or_default()
}
