//! [`ServiceError`]: why an operation of the service failed, one enum for every front end.
//!
//! It wraps the domain's errors unchanged (their sources included); the front ends turn it into
//! the client-facing error code once, in [`edge`](crate::edge).

use crate::fanout::FanoutError;
use crate::history::HistoryError;
use crate::membership::MembershipError;
use crate::receipts::ReceiptError;
use crate::send::SendError;

/// Why an operation of the [`Service`](super::Service) failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller asked too often; what they asked for is named (e.g. "history reads").
    #[error("too many {0}; slow down")]
    RateLimited(&'static str),
    /// The caller shares no conversation with the user whose presence they asked for (also when
    /// that user does not exist: a query must not reveal more than the events would).
    #[error("you share no conversation with this user")]
    NothingShared,
    /// Membership refused the request, or could not be read or written.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// A send was invalid or not acknowledged by JetStream.
    #[error(transparent)]
    Send(#[from] SendError),
    /// A history page could not be read.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// A subscription could not be set up.
    #[error(transparent)]
    Subscribe(#[from] FanoutError),
    /// A read receipt could not be stored.
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    /// The presence bucket could not be read.
    #[error("presence unavailable: {0}")]
    Presence(#[source] async_nats::jetstream::kv::EntryError),
    /// A typing event could not be published.
    #[error("typing event not sent: {0}")]
    Typing(#[source] async_nats::PublishError),
}
