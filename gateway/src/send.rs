//! The send path: validate -> stamp -> publish to JetStream -> ack after the PubAck.
//!
//! The message's `Nats-Msg-Id` is derived from (conversation, sender, client id), so a retried send
//! within the stream's duplicate window is stored once and acknowledged with the original sequence.
//! The reply goes to the sender only after JetStream acknowledged the write (stored, and replicated
//! to a quorum on a cluster): an acknowledged message survives the death of any single process.
//!
//! A PubAck that does not come (the NATS node died with the publish in its socket, the stream is
//! electing a leader) is not the client's problem: the gateway publishes again with the same
//! message id, at most every [`ATTEMPT_TIMEOUT`], until the send's deadline. JetStream stores it
//! once whichever attempt arrived. Only at the deadline does the client get `unavailable`, which
//! means "not known to be stored": the client retries with the same client id.

use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use chatfabric_nats::wire::{self, now_ms, StoredMessage, Via};
use chatfabric_nats::{ConvId, Fabric, UserId};

use crate::metrics::Metrics;

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

/// A stored send: the sequence and whether it was a retry of an earlier one.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    /// The message's stream sequence (its cursor).
    pub seq: u64,
    /// True when JetStream recognised the client id as already stored.
    pub duplicate: bool,
}

/// How long one publish waits for its PubAck before it is sent again (same message id).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between attempts, so a stream without a leader is not flooded.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Whether another attempt may succeed: the ack was lost or the stream is between leaders, as
/// opposed to a message the stream will never take.
fn retryable(e: &PublishError) -> bool {
    !matches!(
        e.kind(),
        PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
    )
}

/// Checks a send's client id and body against the limits, before anything is published.
pub fn validate(client_id: &str, body: &str, max_body: usize) -> Result<(), SendError> {
    if !wire::valid_client_id(client_id) {
        return Err(SendError::InvalidClientId);
    }
    if body.is_empty() {
        return Err(SendError::EmptyBody);
    }
    if body.len() > max_body {
        return Err(SendError::TooLarge(max_body));
    }
    Ok(())
}

/// A validated message before the gateway stamps its id and time.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The conversation.
    pub conv: ConvId,
    /// Who it names as sender (the authenticated user, or the application's service id).
    pub sender: UserId,
    /// How the application posted it, if it did.
    pub via: Option<Via>,
    /// The sender's idempotency key.
    pub client_id: String,
    /// The text.
    pub body: String,
}

/// Stamps and stores a validated message; resolves once JetStream acknowledged it (and counts the
/// ack, whichever front end it came through).
pub async fn publish(
    fabric: &Fabric,
    metrics: &Metrics,
    draft: Draft,
    timeout: Duration,
) -> Result<Stored, SendError> {
    let msg = StoredMessage {
        id: uuid::Uuid::now_v7().to_string(),
        conv: draft.conv,
        sender: draft.sender,
        client_id: draft.client_id,
        ts: now_ms(),
        body: draft.body,
        via: draft.via,
    };
    let payload = Bytes::from(serde_json::to_vec(&msg).map_err(SendError::Encode)?);
    let mut headers = HeaderMap::new();
    headers.insert(wire::MSG_ID_HEADER, msg.dedupe_id().as_str());
    let subject = fabric.settings.partitions.msg_subject(&msg.conv);
    let start = Instant::now();
    let deadline = start + timeout;
    let stored = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), async {
            fabric
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await?
                .await
        })
        .await;
        let error = match attempt {
            Ok(Ok(ack)) => break ack,
            Ok(Err(e)) if !retryable(&e) => {
                return Err(SendError::Unavailable(NotStored::Publish(e)))
            }
            Ok(Err(e)) => NotStored::Publish(e),
            Err(_) => NotStored::TimedOut,
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(SendError::Unavailable(error));
        }
        tracing::debug!(%error, "send not acknowledged yet; publishing again with the same id");
        metrics.publish_retries.inc();
        tokio::time::sleep(RETRY_PAUSE).await;
    };
    metrics
        .publish_latency
        .observe(start.elapsed().as_secs_f64());
    metrics.acks.inc();
    if stored.duplicate {
        metrics.acks_duplicate.inc();
    }
    Ok(Stored {
        seq: stored.sequence,
        duplicate: stored.duplicate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate("k1", "hi", 10).is_ok());
        assert!(matches!(
            validate("", "hi", 10),
            Err(SendError::InvalidClientId)
        ));
        assert!(matches!(
            validate("a b", "hi", 10),
            Err(SendError::InvalidClientId)
        ));
        assert!(matches!(validate("k", "", 10), Err(SendError::EmptyBody)));
        assert!(matches!(
            validate("k", "12345678901", 10),
            Err(SendError::TooLarge(10))
        ));
    }
}
