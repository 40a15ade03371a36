//! The dead-letter stream: events no receiver took, kept for operators to inspect and replay.
//!
//! Each dead letter is the exact body that was POSTed, on `chat.webhooks.dead.<reason>` in stream
//! [`WEBHOOK_DEAD_STREAM`], with headers naming the event, the URL, the attempts and the last
//! error. Its `Nats-Msg-Id` is the event id and the URL, so dead-lettering the same event twice
//! (after a redelivery) within two minutes stores it once.

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

pub use chatfabric_nats::subject::{WEBHOOK_DEAD_PREFIX, WEBHOOK_DEAD_STREAM};

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// Every attempt failed.
    Failed,
    /// The URL's queue was full (it is failing or too slow): not attempted.
    Overflow,
}

impl DeadReason {
    /// The subject token, metric label and `Chatfabric-Dead-Reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Overflow => "overflow",
        }
    }
}

/// The [`WEBHOOK_DEAD_STREAM`] configuration.
pub fn dead_stream_config(replicas: usize) -> stream::Config {
    chatfabric_nats::provision::dead_letter_stream(
        WEBHOOK_DEAD_STREAM,
        "chatfabric webhook events no receiver took",
        &format!("{WEBHOOK_DEAD_PREFIX}.>"),
        replicas,
    )
}

/// One dead letter.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    /// The event's id.
    pub id: &'a str,
    /// Its type.
    pub kind: &'static str,
    /// The URL that did not take it.
    pub url: &'a str,
    /// Why.
    pub reason: DeadReason,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error (empty when not attempted).
    pub error: &'a str,
    /// The event body.
    pub body: Bytes,
}

/// Stores `letter`; `Ok` once JetStream acknowledged it.
pub async fn publish(
    js: &jetstream::Context,
    letter: DeadLetter<'_>,
) -> Result<(), async_nats::Error> {
    let mut headers = HeaderMap::new();
    headers.insert(
        chatfabric_nats::wire::MSG_ID_HEADER,
        format!("{}:{}", letter.id, letter.url).as_str(),
    );
    headers.insert("Chatfabric-Event-Id", letter.id);
    headers.insert("Chatfabric-Event-Type", letter.kind);
    headers.insert("Chatfabric-Webhook-Url", letter.url);
    headers.insert("Chatfabric-Dead-Reason", letter.reason.as_str());
    headers.insert("Chatfabric-Attempts", letter.attempts.to_string().as_str());
    // One line, bounded: receivers' error pages can be anything.
    let error: String = letter
        .error
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    headers.insert("Chatfabric-Last-Error", error.as_str());
    let subject = format!("{WEBHOOK_DEAD_PREFIX}.{}", letter.reason.as_str());
    js.publish_with_headers(subject, headers, letter.body)
        .await?
        .await?;
    Ok(())
}
