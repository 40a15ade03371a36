//! Reads of a conversation's stored messages, asked of its stream's leader.
//!
//! Any replica answers a direct get, and one that lags (or, on nats-server 2.9, stays apart after
//! leader changes, holding the same messages under other sequences) answers with an old head, no
//! message, or another message for a cursor: a resume or a gap fill built on that skips messages
//! or breaks the `prev` chain, and a history page misses some. Everything a client is handed (the
//! head a resync fills to, replays, gap fills, history pages above the store) is therefore read
//! from the leader, which holds every acknowledged write. The live path reads nothing.

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageError, Stream};

/// The newest message stored under `subject`, if any.
pub(crate) async fn last(
    stream: &Stream,
    subject: &str,
) -> Result<Option<StreamMessage>, RawMessageError> {
    found(
        stream
            .raw_message_builder()
            .last_by_subject(subject)
            .send()
            .await,
    )
}

/// The first message stored under `subject` with a sequence of at least `from`, if any.
pub(crate) async fn next(
    stream: &Stream,
    subject: &str,
    from: u64,
) -> Result<Option<StreamMessage>, RawMessageError> {
    found(
        stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(subject)
            .send()
            .await,
    )
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
