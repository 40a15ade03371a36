//! Where the service meets the wire: [`ServiceError`] to the documented [`ErrorCode`], and the
//! service's results to protocol frames. Every front end (WebSocket, HTTP, NATS ingest) maps
//! through here, so a domain error has one client-facing code whichever way it came.

use chatfabric_nats::wire::ConversationInfo;

use crate::fanout::FanoutError;
use crate::history::HistoryError;
use crate::membership::MembershipError;
use crate::protocol::{ConversationView, ErrorCode, ServerFrame};
use crate::receipts::ReceiptError;
use crate::service::send::SendError;
use crate::service::{Sent, ServiceError};

/// The client-facing code of a service error.
pub(crate) fn code(error: &ServiceError) -> ErrorCode {
    match error {
        ServiceError::RateLimited(_) => ErrorCode::RateLimited,
        ServiceError::NothingShared | ServiceError::ServiceId => ErrorCode::Forbidden,
        ServiceError::ServerManaged(_) => ErrorCode::ServerManaged,
        ServiceError::Users(_) => ErrorCode::Unavailable,
        ServiceError::Membership(e) => match e {
            MembershipError::Forbidden(_) => ErrorCode::Forbidden,
            MembershipError::NotFound => ErrorCode::NotFound,
            MembershipError::Conflict => ErrorCode::Conflict,
            MembershipError::Invalid(_)
            | MembershipError::GroupFull
            | MembershipError::TooManyConversations(_)
            | MembershipError::BadId(_) => ErrorCode::Invalid,
            MembershipError::TitleTooLong => ErrorCode::TooLarge,
            MembershipError::Store(_) | MembershipError::Contended { .. } => ErrorCode::Unavailable,
        },
        ServiceError::Send(e) => match e {
            SendError::InvalidClientId | SendError::EmptyBody | SendError::Encode(_) => {
                ErrorCode::Invalid
            }
            SendError::TooLarge(_) => ErrorCode::TooLarge,
            SendError::Unavailable(_) => ErrorCode::Unavailable,
        },
        ServiceError::History(e) => match e {
            HistoryError::Invalid(_) => ErrorCode::Invalid,
            HistoryError::Unavailable(_) => ErrorCode::Unavailable,
        },
        ServiceError::Subscribe(e) => match e {
            FanoutError::CursorExpired(_) => ErrorCode::CursorExpired,
            FanoutError::Unavailable(_) | FanoutError::Busy => ErrorCode::Unavailable,
            FanoutError::CursorAhead { .. } => ErrorCode::Invalid,
        },
        ServiceError::Receipt(e) => match e {
            ReceiptError::Ahead(..) => ErrorCode::Invalid,
            ReceiptError::Unavailable(_) | ReceiptError::Contended => ErrorCode::Unavailable,
        },
        ServiceError::Presence(_) | ServiceError::Typing(_) => ErrorCode::Unavailable,
    }
}

/// The `ack` of a stored message (the WebSocket reply, the body of the HTTP and NATS answers).
pub(crate) fn ack(sent: Sent) -> ServerFrame {
    ServerFrame::Ack {
        conv: sent.conv,
        client_id: sent.client_id,
        seq: sent.seq,
        duplicate: sent.duplicate,
    }
}

/// A conversation as listed to clients.
pub(crate) fn view(info: ConversationInfo) -> ConversationView {
    ConversationView {
        conv: info.conv,
        kind: info.kind,
        title: info.title,
    }
}
