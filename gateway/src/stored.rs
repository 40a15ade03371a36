//! Reads of a conversation's stored messages, asked of its stream's leader.
//!
//! Any replica answers a direct get, and one that lags (or, on nats-server 2.9, stays apart after
//! leader changes, holding the same messages under other sequences) answers with an old head, no
//! message, or another message for a cursor: a resume or a gap fill built on that skips messages
//! or breaks the `prev` chain, and a history page misses some. Everything a client is handed (the
//! head a resync fills to, replays, gap fills, history pages above the store) is therefore read
//! from the leader, which holds every acknowledged write. The live path reads nothing.
//!
//! While the stream elects a leader (its node died or is paused) a read is tried again until
//! [`LEADER_PATIENCE`] is over, rather than failing the resync or resume that asked.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageError, Stream};

/// How long a read keeps asking while the stream has no leader (an election takes seconds).
pub(crate) const LEADER_PATIENCE: Duration = Duration::from_secs(12);

/// Pause between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// The newest message stored under `subject`, if any.
pub(crate) async fn last(
    stream: &Stream,
    subject: &str,
) -> Result<Option<StreamMessage>, RawMessageError> {
    patiently(|| stream.raw_message_builder().last_by_subject(subject).send()).await
}

/// The first message stored under `subject` with a sequence of at least `from`, if any.
pub(crate) async fn next(
    stream: &Stream,
    subject: &str,
    from: u64,
) -> Result<Option<StreamMessage>, RawMessageError> {
    patiently(|| {
        stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(subject)
            .send()
    })
    .await
}

/// Asks until an answer comes (a message, or none stored) or [`LEADER_PATIENCE`] is over.
async fn patiently<F, Fut>(ask: F) -> Result<Option<StreamMessage>, RawMessageError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<StreamMessage, RawMessageError>>,
{
    let deadline = Instant::now() + LEADER_PATIENCE;
    loop {
        match found(ask().await) {
            Err(e)
                if e.kind() != LastRawMessageErrorKind::InvalidSubject
                    && Instant::now() + RETRY_PAUSE < deadline =>
            {
                tracing::debug!(error = %e, "stored message read failed; asking the leader again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            answer => return answer,
        }
    }
}

fn found(
    got: Result<StreamMessage, RawMessageError>,
) -> Result<Option<StreamMessage>, RawMessageError> {
    match got {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e),
    }
}
