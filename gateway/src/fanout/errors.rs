//! Why the fan-out could not set up a subscription, or keep a conversation's feed.

use std::sync::Arc;

/// Why a subscription could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The cursor is older than the stream's retention, or too far behind to replay.
    #[error(
        "cursor is too old to resume from ({0}); read history, then subscribe with a newer cursor"
    )]
    CursorExpired(Expired),
    /// NATS or JetStream could not be reached (shared: one failure answers every waiting
    /// subscribe).
    #[error("message stream unavailable: {0}")]
    Unavailable(#[source] Arc<FeedError>),
    /// The conversation's command queue is full; retry shortly.
    #[error("gateway busy; retry")]
    Busy,
    /// The cursor is past the conversation's newest message: it was never handed out for this
    /// conversation.
    #[error("cursor {after} is past the conversation's newest message ({head})")]
    CursorAhead {
        /// The cursor asked for.
        after: u64,
        /// The newest message's `seq`.
        head: u64,
    },
}

/// Why a cursor can no longer be resumed from.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum Expired {
    /// The stream no longer holds the messages after it.
    #[error("the stream keeps messages from {first} on")]
    Retention {
        /// The stream's first sequence.
        first: u64,
    },
    /// More messages follow it than a replay may send.
    #[error("more than {max} messages behind")]
    TooFarBehind {
        /// The replay bound (`max_catchup`).
        max: u64,
    },
}

/// Why a conversation's feed failed: NATS or JetStream did not answer as it should.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// A NATS or JetStream request failed.
    #[error("{what}: {source}")]
    Nats {
        /// What was asked.
        what: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The messages up to this sequence are not found on the replica asked, after retries.
    #[error("messages up to {0} not found")]
    Missing(u64),
    /// The gateway is shutting down.
    #[error("gateway shutting down")]
    Stopped,
}

/// Any error of the NATS client, kept as the source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl FeedError {
    /// Wraps a NATS client error, saying what was asked.
    pub(super) fn nats<E: Into<BoxError>>(what: &'static str) -> impl FnOnce(E) -> Self {
        move |e| Self::Nats {
            what,
            source: e.into(),
        }
    }
}
