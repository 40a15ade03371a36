//! [`MembershipError`].

use chatfabric_nats::UserId;

use super::limits::{MAX_GROUP_MEMBERS, MAX_TITLE_LEN};

/// Why a membership operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The conversation does not exist.
    #[error("conversation not found")]
    NotFound,
    /// A conversation with this id exists with another kind, title or member list.
    #[error("a conversation with this id exists with another kind, title or members")]
    Conflict,
    /// The request is invalid (a direct conversation with oneself, a listing limit of 0, ...).
    #[error("{0}")]
    Invalid(&'static str),
    /// A group would have more than [`MAX_GROUP_MEMBERS`] members.
    #[error("a group has at most {MAX_GROUP_MEMBERS} members")]
    GroupFull,
    /// The user is in as many conversations as they may be.
    #[error("a user belongs to at most {0} conversations")]
    TooManyConversations(usize),
    /// A group's title is longer than [`MAX_TITLE_LEN`].
    #[error("title exceeds {MAX_TITLE_LEN} bytes")]
    TitleTooLong,
    /// A conversation id could not be made.
    #[error("{0}")]
    BadId(#[source] chatfabric_nats::IdError),
    /// The KV bucket could not be read or written.
    #[error("membership store unavailable: {0}")]
    Store(#[source] BoxError),
    /// The user's conversation index kept changing under concurrent writes from other gateways.
    #[error("conversation index of {user} kept changing: {last}")]
    Contended {
        /// Whose index.
        user: UserId,
        /// The last refused write.
        #[source]
        last: BoxError,
    },
}

/// A NATS or JSON error, kept as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(super) fn store_err(e: impl Into<BoxError>) -> MembershipError {
    MembershipError::Store(e.into())
}
