//! The documented error codes of `error` frames and the WebSocket close codes.

use serde::{Deserialize, Serialize};

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
    /// Membership is managed by the application (`--client-membership`): clients may not do this.
    ServerManaged,
    /// Server API: a conversation with this id exists with other settings.
    Conflict,
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
            Self::ServerManaged => "server_managed",
            Self::Conflict => "conflict",
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
    /// The application disconnected you (logout, ban): do not reconnect on your own; a revoked
    /// token is refused from now on (4001).
    pub const DISCONNECTED: u16 = 4003;
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
            DISCONNECTED => "disconnected by the application",
            _ => "closed by the gateway",
        }
    }
}
