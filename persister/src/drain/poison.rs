//! Poison messages: what makes a stored message unusable, and the dead-letter stream it goes to.
//!
//! A message the persister cannot store must never block its partition (the consumer would
//! redeliver it forever and the watermark would stop). It is copied, with headers saying why and
//! where it came from, to `chat.dead.<part>` in stream [`DEAD_STREAM`], and then terminated on
//! its own stream.

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use chatfabric_nats::subject::conv_of_subject;
use chatfabric_nats::wire::{StoredMessage, MSG_ID_HEADER};

pub use chatfabric_nats::subject::{DEAD_PREFIX, DEAD_STREAM};
/// Header: why the message was dead-lettered ([`PoisonReason::as_str`]).
pub const DEAD_REASON_HEADER: &str = "Chatfabric-Dead-Reason";
/// Header: the parser's description of the problem (one line, at most 200 bytes).
pub const DEAD_DETAIL_HEADER: &str = "Chatfabric-Dead-Detail";
/// Header: the stream the message was stored in.
pub const DEAD_STREAM_HEADER: &str = "Chatfabric-Dead-Stream";
/// Header: the message's sequence in that stream.
pub const DEAD_SEQUENCE_HEADER: &str = "Chatfabric-Dead-Sequence";
/// Header: the subject the message was stored under.
pub const DEAD_SUBJECT_HEADER: &str = "Chatfabric-Dead-Subject";

/// The subject partition `part`'s dead letters are published on.
pub fn dead_subject(part: u16) -> String {
    format!("{DEAD_PREFIX}.{part}")
}

/// The [`DEAD_STREAM`] configuration.
pub fn dead_stream_config(replicas: usize) -> stream::Config {
    chatfabric_nats::provision::dead_letter_stream(
        DEAD_STREAM,
        "chatfabric messages the persister could not store",
        &format!("{DEAD_PREFIX}.>"),
        replicas,
    )
}

/// Why a message cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoisonReason {
    /// Larger than the configured maximum.
    Oversized,
    /// Not JSON at all.
    InvalidJson,
    /// JSON, but not a [`StoredMessage`] (missing fields, invalid ids).
    InvalidSchema,
    /// The payload's `conv` differs from the conversation in the subject.
    ConvMismatch,
    /// The subject has no valid conversation token.
    BadSubject,
}

impl PoisonReason {
    /// Every reason.
    pub const ALL: [Self; 5] = [
        Self::Oversized,
        Self::InvalidJson,
        Self::InvalidSchema,
        Self::ConvMismatch,
        Self::BadSubject,
    ];

    /// The value of the [`DEAD_REASON_HEADER`] header and of the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::InvalidJson => "invalid_json",
            Self::InvalidSchema => "invalid_schema",
            Self::ConvMismatch => "conv_mismatch",
            Self::BadSubject => "bad_subject",
        }
    }
}

/// A message the persister refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// Why the message cannot be stored.
    pub reason: PoisonReason,
    /// What the parser said, for the dead letter's headers.
    pub detail: String,
}

impl Poison {
    fn new(reason: PoisonReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Parses a stored message, checking everything the store relies on.
pub fn parse(subject: &str, payload: &[u8], max_bytes: usize) -> Result<StoredMessage, Poison> {
    if payload.len() > max_bytes {
        return Err(Poison::new(
            PoisonReason::Oversized,
            format!("{} bytes, limit {max_bytes}", payload.len()),
        ));
    }
    let conv =
        conv_of_subject(subject).ok_or_else(|| Poison::new(PoisonReason::BadSubject, subject))?;
    let msg: StoredMessage = serde_json::from_slice(payload).map_err(|e| {
        let reason = match e.classify() {
            serde_json::error::Category::Data => PoisonReason::InvalidSchema,
            _ => PoisonReason::InvalidJson,
        };
        Poison::new(reason, e.to_string())
    })?;
    if msg.conv != conv {
        return Err(Poison::new(
            PoisonReason::ConvMismatch,
            format!("payload conv {} in subject of {conv}", msg.conv),
        ));
    }
    Ok(msg)
}

/// Publishes a copy of a poison message to the dead-letter stream and waits for JetStream to
/// store it. The message id makes a repeated dead-lettering of the same message land once.
pub(crate) async fn dead_letter(
    js: &jetstream::Context,
    part: u16,
    original: &jetstream::Message,
    stream: &str,
    seq: u64,
    poison: &Poison,
) -> Result<(), async_nats::Error> {
    let mut headers = HeaderMap::new();
    headers.insert(DEAD_REASON_HEADER, poison.reason.as_str());
    headers.insert(DEAD_DETAIL_HEADER, one_line(&poison.detail).as_str());
    headers.insert(DEAD_STREAM_HEADER, stream);
    headers.insert(DEAD_SEQUENCE_HEADER, seq.to_string().as_str());
    headers.insert(DEAD_SUBJECT_HEADER, original.subject.as_str());
    headers.insert(MSG_ID_HEADER, format!("{stream}:{seq}").as_str());
    js.publish_with_headers(dead_subject(part), headers, original.payload.clone())
        .await?
        .await?;
    Ok(())
}

/// Header values must be one line; details come from parsers and may quote the payload.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 200 {
        let mut cut = 200;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        r#"{"id":"1","conv":"room","sender":"alice","client_id":"c","ts":1,"body":"hi"}"#;

    #[test]
    fn accepts_a_valid_message() {
        let msg = parse("chat.msg.0.room", GOOD.as_bytes(), 1024).unwrap();
        assert_eq!(msg.body, "hi");
    }

    #[test]
    fn classifies_poison() {
        let reason = |subject: &str, payload: &str, max| {
            parse(subject, payload.as_bytes(), max).unwrap_err().reason
        };
        assert_eq!(reason("chat.msg.0.room", GOOD, 10), PoisonReason::Oversized);
        assert_eq!(
            reason("chat.msg.0.room", "{not json", 1024),
            PoisonReason::InvalidJson
        );
        assert_eq!(
            reason("chat.msg.0.room", r#"{"id":"1"}"#, 1024),
            PoisonReason::InvalidSchema
        );
        let bad_sender = GOOD.replace("alice", "a.b");
        assert_eq!(
            reason("chat.msg.0.room", &bad_sender, 1024),
            PoisonReason::InvalidSchema
        );
        assert_eq!(
            reason("chat.msg.0.other", GOOD, 1024),
            PoisonReason::ConvMismatch
        );
        assert_eq!(reason("chat.msg.0.", GOOD, 1024), PoisonReason::BadSubject);
    }

    #[test]
    fn details_become_one_short_line() {
        let s = one_line(&format!("a\nb\r{}", "é".repeat(300)));
        assert!(!s.contains('\n') && !s.contains('\r'));
        assert!(s.len() <= 200);
    }
}
