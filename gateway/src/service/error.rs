//! [`ServiceError`]: why an operation of the service failed, one enum for every front end.
//!
//! It wraps the domain's errors unchanged (their sources included); the front ends turn it into
//! the client-facing error code once, in [`edge`](crate::edge).

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::kv;
use chatfabric_nats::wire;

use crate::fanout::FanoutError;
use crate::history::HistoryError;
use crate::membership::MembershipError;
use crate::receipts::ReceiptError;

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
    /// A client asked for a membership change the gateway leaves to the application
    /// (`--client-membership`).
    #[error("{0}")]
    ServerManaged(&'static str),
    /// A client or bot with a service id (`svc_...`) tried to act; only the server API may.
    #[error("service ids (svc_...) are the application's; no client may act as one")]
    ServiceId,
    /// The users bucket (disconnects, revocations) could not be read or written.
    #[error("users store unavailable: {0}")]
    Users(#[source] UsersError),
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

/// Why a user's record in the users bucket (a disconnect or revocation) could not be read or
/// written. Each says what its source says.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The user's current record could not be read.
    #[error("{0}")]
    Read(#[source] kv::EntryError),
    /// The new record could not be encoded.
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    /// The record could not be replaced at the revision read (the last of several tries).
    #[error("{0}")]
    Update(#[source] kv::UpdateError),
    /// The first record could not be created (the last of several tries).
    #[error("{0}")]
    Create(#[source] kv::CreateError),
}

/// Why a send was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The client id is empty, too long or not printable ASCII.
    #[error(
        "client_id must be 1 to {} printable ASCII characters",
        wire::MAX_CLIENT_ID_LEN
    )]
    InvalidClientId,
    /// The body is empty.
    #[error("body is empty")]
    EmptyBody,
    /// The body exceeds the limit.
    #[error("body exceeds {0} bytes")]
    TooLarge(usize),
    /// The message could not be encoded (it holds only strings and integers: not expected).
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    /// JetStream did not acknowledge within the deadline, or refused: the message is not known to
    /// be stored (it may be); retrying with the same client id is safe and stores it once.
    #[error("message not known to be stored ({0}); retry with the same client_id")]
    Unavailable(#[source] NotStored),
}

/// Why JetStream did not acknowledge a send.
#[derive(Debug, thiserror::Error)]
pub enum NotStored {
    /// The last attempt's publish failed, or the stream refused the message.
    #[error("{0}")]
    Publish(#[source] PublishError),
    /// No PubAck came within the deadline.
    #[error("timed out waiting for the stream")]
    TimedOut,
}
