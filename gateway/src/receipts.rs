//! Read receipts and unread counts.
//!
//! A member's read cursor in a conversation is `r.<conv>.<user>` in the `CHAT_RECEIPTS` bucket, so
//! it survives restarts and every device of the user shares it. It only moves forward: a
//! compare-and-set loop ignores a cursor at or below the stored one (two devices marking read at
//! once both succeed; the larger cursor stays). Each move is announced to the conversation's
//! subscribers on `chat.eph.<conv>.read`.
//!
//! Unread counts are exact: the messages of the conversation after the cursor, counted by
//! JetStream. Nothing is asked when the head is at the cursor; with no cursor the stream's
//! per-subject count answers; otherwise `num_pending` of a short-lived filtered consumer starting
//! after the cursor.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::kv::Operation;
use async_nats::jetstream::stream::DirectGetErrorKind;
use bytes::Bytes;
use chatfabric_nats::subject::{self, Ephemeral};
use chatfabric_nats::wire::{now_ms, EphemeralEvent, ReadCursor};
use chatfabric_nats::{ConvId, Fabric, UserId};
use futures::StreamExt;

/// Why a receipt or count failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The cursor is past the conversation's newest message.
    #[error("seq {0} is past the conversation's newest message ({1})")]
    Ahead(u64, u64),
    /// KV or JetStream could not be reached.
    #[error("receipts unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Other devices kept moving the cursor while this one tried to.
    #[error("read cursor contended; retry")]
    Contended,
}

fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ReceiptError {
    ReceiptError::Unavailable(e.into())
}

/// The conversation's newest stored sequence (0 if none).
pub async fn head(fabric: &Fabric, conv: &ConvId) -> Result<u64, ReceiptError> {
    let subject = fabric.settings.partitions.msg_subject(conv);
    match fabric
        .stream_for(conv)
        .direct_get_last_for_subject(subject)
        .await
    {
        Ok(m) => Ok(m.sequence),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(0),
        Err(e) => Err(unavailable(e)),
    }
}

/// `user`'s read cursor in `conv` (0 if never set).
pub async fn cursor(fabric: &Fabric, conv: &ConvId, user: &UserId) -> Result<u64, ReceiptError> {
    Ok(fabric
        .receipts
        .get(subject::receipt_key(conv, user))
        .await
        .map_err(unavailable)?
        .and_then(|v| serde_json::from_slice::<ReadCursor>(&v).ok())
        .map_or(0, |c| c.seq))
}

/// Moves `user`'s cursor in `conv` forward to `seq` and announces it. Returns the cursor
/// afterwards (the stored one, if it was already past `seq`). The caller checked membership.
pub async fn mark_read(
    fabric: &Fabric,
    conv: &ConvId,
    user: &UserId,
    seq: u64,
) -> Result<u64, ReceiptError> {
    let newest = head(fabric, conv).await?;
    if seq > newest {
        return Err(ReceiptError::Ahead(seq, newest));
    }
    let key = subject::receipt_key(conv, user);
    let value =
        Bytes::from(serde_json::to_vec(&ReadCursor { seq, ts: now_ms() }).unwrap_or_default());
    for _ in 0..10 {
        let current = fabric.receipts.entry(&key).await.map_err(unavailable)?;
        let written = match current {
            Some(e) if e.operation == Operation::Put => {
                let stored = serde_json::from_slice::<ReadCursor>(&e.value).map_or(0, |c| c.seq);
                if stored >= seq {
                    return Ok(stored);
                }
                fabric
                    .receipts
                    .update(&key, value.clone(), e.revision)
                    .await
                    .is_ok()
            }
            _ => fabric.receipts.create(&key, value.clone()).await.is_ok(),
        };
        if written {
            let event = EphemeralEvent::Read {
                conv: conv.clone(),
                user: user.clone(),
                seq,
            };
            let payload = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
            fabric
                .client
                .publish(subject::ephemeral_subject(conv, Ephemeral::Read), payload)
                .await
                .map_err(unavailable)?;
            return Ok(seq);
        }
        // Another device moved the cursor meanwhile: look again.
    }
    Err(ReceiptError::Contended)
}

/// Messages in `conv` after `user`'s cursor.
pub async fn unread(fabric: &Fabric, conv: &ConvId, user: &UserId) -> Result<u64, ReceiptError> {
    let (newest, read) = tokio::try_join!(head(fabric, conv), cursor(fabric, conv, user))?;
    if newest <= read {
        return Ok(0);
    }
    let stream = fabric.stream_for(conv);
    let subject = fabric.settings.partitions.msg_subject(conv);
    if read == 0 {
        // Nothing read yet: every message counts, and the stream's per-subject count says how
        // many without creating a consumer.
        let mut counts = stream
            .info_with_subjects(&subject)
            .await
            .map_err(unavailable)?;
        let mut total = 0;
        while let Some(entry) = counts.next().await {
            total += entry.map_err(unavailable)?.1 as u64;
        }
        return Ok(total);
    }
    messages_after(fabric, conv, read)
        .await
        .map_err(unavailable)
}

/// Messages stored in `conv` after `after`: `num_pending` of a short-lived filtered consumer.
pub(crate) async fn messages_after(
    fabric: &Fabric,
    conv: &ConvId,
    after: u64,
) -> Result<u64, async_nats::jetstream::stream::ConsumerError> {
    let stream = fabric.stream_for(conv);
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: fabric.settings.partitions.msg_subject(conv),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ack_policy: AckPolicy::None,
            memory_storage: true,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let info = consumer.cached_info();
    let count = info.num_pending;
    // Best effort: the inactivity threshold removes it anyway.
    let _ = stream.delete_consumer(&info.name).await;
    Ok(count)
}

/// Unread counts of `convs` for `user`, a few conversations at a time. Conversations whose count
/// could not be read are left out.
pub async fn unread_counts(
    fabric: &Fabric,
    user: &UserId,
    convs: Vec<ConvId>,
) -> BTreeMap<ConvId, u64> {
    futures::stream::iter(convs)
        .map(|conv| async move {
            let n = unread(fabric, &conv, user).await;
            (conv, n)
        })
        .buffer_unordered(8)
        .filter_map(|(conv, n)| async move {
            match n {
                Ok(n) => Some((conv, n)),
                Err(e) => {
                    tracing::warn!(%conv, error = %e, "unread count unavailable");
                    None
                }
            }
        })
        .collect()
        .await
}
