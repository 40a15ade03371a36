//! The client-facing wire protocol: JSON text frames, error codes and close codes.
//!
//! PROTOCOL.md documents every type here with examples; the two must change together.
//! Frames are tagged by `op`. Every request may carry a `ref` (at most 64 bytes) which the reply
//! echoes, so a client can match replies to requests.

use std::collections::BTreeMap;

use chatfabric_nats::wire::{ConvKind, TypingState};
use chatfabric_nats::{ConvId, UserId};
use serde::{Deserialize, Serialize};

/// A frame from a client.
///
/// Unknown fields are ignored, so an older gateway serves a newer client that added one; fields
/// the gateway stamps (`sender`, `id`, `ts`, `seq`) do not exist here, so they are never taken
/// from a client.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Authenticate the connection (when no `Authorization` header was sent on upgrade).
    Auth {
        /// A JWT; its `sub` is the user id.
        token: String,
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Receive a conversation's messages; with `after`, first every message after that cursor.
    Subscribe {
        /// The conversation.
        conv: ConvId,
        /// Resume cursor: the `seq` of the last message the client has.
        #[serde(default)]
        after: Option<u64>,
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Stop receiving a conversation.
    Unsubscribe {
        /// The conversation.
        conv: ConvId,
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Post a message. Acknowledged with `ack` once stored; retry with the same `client_id`.
    Send {
        /// The conversation.
        conv: ConvId,
        /// The client's idempotency key for this message.
        client_id: String,
        /// The text.
        body: String,
    },
    /// Create a direct conversation (`with`) or a group (`members`, `title`).
    Create {
        /// Direct or group.
        kind: ConvKind,
        /// The other user of a direct conversation.
        #[serde(default)]
        with: Option<UserId>,
        /// The initial members of a group besides the creator.
        #[serde(default)]
        members: Vec<UserId>,
        /// A group's title.
        #[serde(default)]
        title: Option<String>,
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Add a member to a group.
    AddMember {
        /// The group.
        conv: ConvId,
        /// Who to add.
        user: UserId,
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Remove a member from a group (yourself, or anyone if you created it).
    RemoveMember {
        /// The group.
        conv: ConvId,
        /// Who to remove.
        user: UserId,
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// List the conversations you are a member of, a page at a time, by id.
    Conversations {
        /// Only conversations whose id sorts after this one (the previous page's `next`).
        #[serde(default)]
        after: Option<ConvId>,
        /// Page size, 1 to 100 (default 100).
        #[serde(default)]
        limit: Option<usize>,
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Read a page of history, newest first (see PROTOCOL.md for walking pages).
    History {
        /// The conversation.
        conv: ConvId,
        /// Only messages with `seq < before` (scroll back).
        #[serde(default)]
        before: Option<u64>,
        /// Only messages with `seq > after` (catch up).
        #[serde(default)]
        after: Option<u64>,
        /// Page size, 1 to 1000 (default 50).
        #[serde(default)]
        limit: Option<usize>,
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// List a conversation's members.
    Members {
        /// The conversation.
        conv: ConvId,
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Tell the conversation's members you started or stopped typing. Not stored, not answered
    /// (errors excepted); rate-limited per connection.
    Typing {
        /// The conversation.
        conv: ConvId,
        /// `start` or `stop`.
        state: TypingState,
        /// Echoed in an error reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Mark the conversation read up to and including `seq`. Answered with `read`.
    Read {
        /// The conversation.
        conv: ConvId,
        /// The cursor of the newest message read.
        seq: u64,
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Ask for a user's presence; allowed when you share a conversation with them.
    Presence {
        /// Whose presence.
        user: UserId,
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Liveness check; answered with `pong`.
    Ping {
        /// Echoed in the reply.
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
}

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

/// The documented error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON or not an object with a string `op`.
    BadFrame,
    /// `op` names no operation.
    UnknownOp,
    /// A field is missing or invalid (ids, client_id, empty body...).
    Invalid,
    /// A body or title exceeds its documented limit.
    TooLarge,
    /// The connection is not authenticated yet, or `auth` was sent twice.
    Unauthenticated,
    /// The user is not a member of the conversation (or may not do this to it).
    Forbidden,
    /// The conversation does not exist.
    NotFound,
    /// Too many frames per second; slow down.
    RateLimited,
    /// The resume cursor is older than the stream keeps; read history instead.
    CursorExpired,
    /// Storage is unreachable or timed out; retry (a `send` with the same `client_id`).
    Unavailable,
}

impl ErrorCode {
    /// The code's wire name (also the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::UnknownOp => "unknown_op",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::CursorExpired => "cursor_expired",
            Self::Unavailable => "unavailable",
        }
    }
}

/// WebSocket close codes the gateway uses, with the action a client should take.
pub mod close {
    /// The gateway is shutting down: reconnect (any gateway) and resume from your cursors.
    pub const GOING_AWAY: u16 = 1001;
    /// A binary frame was sent: the protocol is text JSON only. Do not retry as is.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A frame exceeded the frame size limit. Do not retry as is.
    pub const TOO_BIG: u16 = 1009;
    /// The gateway lost its view of a conversation: reconnect and resume from your cursors.
    pub const INTERNAL: u16 = 1011;
    /// Missing, invalid, forged or expired token, or no `auth` in time. Get a new token.
    pub const UNAUTHORIZED: u16 = 4001;
    /// Your outbound queue overflowed (you read too slowly): reconnect and resume from your cursors.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// You kept sending past the rate limit. Back off before reconnecting.
    pub const FLOOD: u16 = 4029;

    /// The reason sent with a close the gateway decides on its own (a kick or a flood).
    pub fn reason(code: u16) -> &'static str {
        match code {
            SLOW_CONSUMER => "slow consumer: outbound queue overflowed; reconnect and resume",
            FLOOD => "rate limit exceeded repeatedly",
            INTERNAL => "conversation feed interrupted; reconnect and resume",
            _ => "closed by the gateway",
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
}

/// Encodes a `msg` frame for `m` stored at `seq`.
pub fn encode_msg(m: &chatfabric_nats::wire::StoredMessage, seq: u64, prev: u64) -> String {
    let frame = MsgFrame {
        op: "msg",
        conv: &m.conv,
        seq,
        prev,
        id: &m.id,
        sender: &m.sender,
        client_id: &m.client_id,
        ts: m.ts,
        body: &m.body,
    };
    // Serializing borrowed strings and integers cannot fail.
    serde_json::to_string(&frame).unwrap_or_default()
}

#[derive(Serialize)]
struct HistoryFrame<'a> {
    op: &'static str,
    conv: &'a ConvId,
    messages: &'a [crate::history::HistoryMessage],
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

/// Encodes a `history` reply (also the body of the HTTP history endpoint).
pub fn encode_history(
    conv: &ConvId,
    messages: &[crate::history::HistoryMessage],
    reference: Option<&str>,
) -> String {
    let frame = HistoryFrame {
        op: "history",
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

/// Why a text frame could not be decoded into a [`ClientFrame`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not an object with a string `op`.
    #[error("frame is not a JSON object with a string \"op\"")]
    BadFrame,
    /// The `op` is unknown.
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    /// A known op with missing or invalid fields.
    #[error("{0}")]
    Invalid(String),
}

impl DecodeError {
    /// The error code a client receives for this.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadFrame => ErrorCode::BadFrame,
            Self::UnknownOp(_) => ErrorCode::UnknownOp,
            Self::Invalid(_) => ErrorCode::Invalid,
        }
    }
}

const KNOWN_OPS: &[&str] = &[
    "auth",
    "subscribe",
    "unsubscribe",
    "send",
    "create",
    "add_member",
    "remove_member",
    "conversations",
    "members",
    "history",
    "typing",
    "read",
    "presence",
    "ping",
];

/// The `ref` of a frame that did not decode (for a `send`, its `client_id`), so that the error
/// still reaches the request it answers: a string of at most 64 bytes, else none.
pub fn raw_reference(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Refs {
        #[serde(default)]
        op: Option<String>,
        #[serde(default, rename = "ref")]
        reference: Option<serde_json::Value>,
        #[serde(default)]
        client_id: Option<serde_json::Value>,
    }
    let refs: Refs = serde_json::from_str(text).ok()?;
    let value = if refs.op.as_deref() == Some("send") {
        refs.client_id
    } else {
        refs.reference
    };
    match value {
        Some(serde_json::Value::String(r)) if r.len() <= 64 => Some(r),
        _ => None,
    }
}

/// Decodes a client's text frame, telling malformed JSON, unknown ops and invalid fields apart.
pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => Ok(frame),
        Err(err) => {
            #[derive(Deserialize)]
            struct OpOnly<'a> {
                #[serde(borrow)]
                op: std::borrow::Cow<'a, str>,
            }
            match serde_json::from_str::<OpOnly<'_>>(text) {
                Err(_) => Err(DecodeError::BadFrame),
                Ok(o) if !KNOWN_OPS.contains(&o.op.as_ref()) => {
                    Err(DecodeError::UnknownOp(o.op.chars().take(32).collect()))
                }
                Ok(_) => Err(DecodeError::Invalid(err.to_string())),
            }
        }
    }
}

/// The `ref` a frame carries, if any (replies echo it).
pub fn reference_of(frame: &ClientFrame) -> Option<&str> {
    match frame {
        ClientFrame::Auth { reference, .. }
        | ClientFrame::Subscribe { reference, .. }
        | ClientFrame::Unsubscribe { reference, .. }
        | ClientFrame::Create { reference, .. }
        | ClientFrame::AddMember { reference, .. }
        | ClientFrame::RemoveMember { reference, .. }
        | ClientFrame::Conversations { reference, .. }
        | ClientFrame::Members { reference, .. }
        | ClientFrame::History { reference, .. }
        | ClientFrame::Typing { reference, .. }
        | ClientFrame::Read { reference, .. }
        | ClientFrame::Presence { reference, .. }
        | ClientFrame::Ping { reference } => reference.as_deref(),
        ClientFrame::Send { client_id, .. } => Some(client_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_frames_that_do_not_decode_keep_their_ref() {
        let create = r#"{"op":"create","kind":"direct","with":"not valid!","ref":"c1"}"#;
        assert!(decode(create).is_err());
        assert_eq!(raw_reference(create).as_deref(), Some("c1"));
        let send = r#"{"op":"send","conv":"a.b","client_id":"k-1","body":"x","ref":"no"}"#;
        assert_eq!(raw_reference(send).as_deref(), Some("k-1"));
        let long = format!(r#"{{"op":"members","conv":1,"ref":"{}"}}"#, "r".repeat(65));
        assert_eq!(raw_reference(&long), None);
        assert_eq!(raw_reference(r#"{"op":"members","ref":7}"#), None);
        assert_eq!(raw_reference("{nope"), None);
    }

    #[test]
    fn decode_tells_errors_apart() {
        assert!(matches!(decode("{nope"), Err(DecodeError::BadFrame)));
        assert!(matches!(decode("[1,2]"), Err(DecodeError::BadFrame)));
        assert!(matches!(decode(r#"{"op":"fly"}"#), Err(DecodeError::UnknownOp(o)) if o == "fly"));
        assert!(matches!(
            decode(r#"{"op":"send","conv":"c"}"#),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            decode(r#"{"op":"subscribe","conv":"a.b"}"#),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            decode(r#"{"op":"send","conv":"c","client_id":"k","body":"hi"}"#),
            Ok(ClientFrame::Send { .. })
        ));
    }

    #[test]
    fn ephemeral_frames_decode_and_encode() {
        assert!(matches!(
            decode(r#"{"op":"typing","conv":"c","state":"start"}"#),
            Ok(ClientFrame::Typing {
                state: TypingState::Start,
                ..
            })
        ));
        assert!(matches!(
            decode(r#"{"op":"typing","conv":"c","state":"maybe"}"#),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            decode(r#"{"op":"read","conv":"c","seq":4}"#),
            Ok(ClientFrame::Read { seq: 4, .. })
        ));
        let mut counts = BTreeMap::new();
        counts.insert(ConvId::new("c").unwrap(), 3);
        assert_eq!(
            encode(&ServerFrame::Unread { counts }),
            r#"{"op":"unread","counts":{"c":3}}"#
        );
        let e = chatfabric_nats::wire::EphemeralEvent::Typing {
            conv: ConvId::new("c").unwrap(),
            user: UserId::new("bob").unwrap(),
            state: TypingState::Stop,
            expires_in: 6000,
        };
        assert_eq!(
            encode_event(&e),
            r#"{"op":"typing","conv":"c","user":"bob","state":"stop","expires_in":6000}"#
        );
    }

    #[test]
    fn msg_frame_round_trips() {
        let m = chatfabric_nats::wire::StoredMessage {
            id: "i".into(),
            conv: ConvId::new("c").unwrap(),
            sender: UserId::new("alice").unwrap(),
            client_id: "k1".into(),
            ts: 7,
            body: "hi \"there\"\n".into(),
        };
        let d: Delivered = serde_json::from_str(&encode_msg(&m, 42, 41)).unwrap();
        assert_eq!((d.seq, d.prev, d.body.as_str()), (42, 41, m.body.as_str()));
    }
}
