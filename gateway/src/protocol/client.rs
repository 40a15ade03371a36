//! Frames from clients: [`ClientFrame`], and decoding that tells malformed JSON, unknown ops and
//! invalid fields apart.

use chatfabric_nats::wire::{ConvKind, TypingState};
use chatfabric_nats::{ConvId, UserId};
use serde::Deserialize;

use super::codes::ErrorCode;
use super::ops::ClientOp;

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

impl ClientFrame {
    /// The frame's op (its name is [`ClientOp::name`]).
    pub fn op(&self) -> ClientOp {
        match self {
            Self::Auth { .. } => ClientOp::Auth,
            Self::Subscribe { .. } => ClientOp::Subscribe,
            Self::Unsubscribe { .. } => ClientOp::Unsubscribe,
            Self::Send { .. } => ClientOp::Send,
            Self::Create { .. } => ClientOp::Create,
            Self::AddMember { .. } => ClientOp::AddMember,
            Self::RemoveMember { .. } => ClientOp::RemoveMember,
            Self::Conversations { .. } => ClientOp::Conversations,
            Self::Members { .. } => ClientOp::Members,
            Self::History { .. } => ClientOp::History,
            Self::Typing { .. } => ClientOp::Typing,
            Self::Read { .. } => ClientOp::Read,
            Self::Presence { .. } => ClientOp::Presence,
            Self::Ping { .. } => ClientOp::Ping,
        }
    }
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
    Invalid(#[source] serde_json::Error),
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
    let value = if refs.op.as_deref() == Some(ClientOp::Send.name()) {
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
                Ok(o) if ClientOp::from_name(&o.op).is_none() => {
                    Err(DecodeError::UnknownOp(o.op.chars().take(32).collect()))
                }
                Ok(_) => Err(DecodeError::Invalid(err)),
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
