//! The send path: validate -> membership -> stamp -> publish to JetStream -> ack after the PubAck.
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

use super::caller::Caller;
use super::context::Service;
use super::error::ServiceError;
pub use super::error::{NotStored, SendError};
use crate::metrics::Metrics;

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

/// A message to post.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The conversation.
    pub conv: ConvId,
    /// The sender's idempotency key.
    pub client_id: String,
    /// The text.
    pub body: String,
}

/// A stored message: what its sender is acknowledged with.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The conversation.
    pub conv: ConvId,
    /// The sender's idempotency key.
    pub client_id: String,
    /// The message's cursor.
    pub seq: u64,
    /// True when the client id had been stored before (a retry); `seq` is the original's.
    pub duplicate: bool,
}

impl Service {
    /// Stores a message as the caller and resolves once JetStream acknowledged it: the same
    /// validation, dedupe id and ack point for every front end. What the application posts
    /// (as a service or on a user's behalf) is stored with the caller's [`Caller::via`].
    pub async fn send(&self, caller: &Caller, req: SendRequest) -> Result<Sent, ServiceError> {
        validate(&req.client_id, &req.body, self.limits.max_body)?;
        self.require_member(caller, &req.conv).await?;
        let stored = publish(
            &self.fabric,
            &self.metrics,
            Draft {
                conv: req.conv.clone(),
                sender: caller.acting_as().clone(),
                via: caller.via(),
                client_id: req.client_id.clone(),
                body: req.body,
            },
            self.limits.publish_timeout,
        )
        .await
        .inspect_err(|e| tracing::warn!(conv = %req.conv, error = %e, "send failed"))?;
        Ok(Sent {
            conv: req.conv,
            client_id: req.client_id,
            seq: stored.seq,
            duplicate: stored.duplicate,
        })
    }
}
