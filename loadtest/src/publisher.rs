//! A NATS-direct publisher: a bot that skips the gateway's WebSocket and posts with requests on
//! `chat.in.<conv>.<bot>` (PROTOCOL.md, "Bots and devices on NATS"), over its own NATS connection.
//!
//! The fabric's ingest service answers each request after the message is stored, with the same
//! `ack` frame a WebSocket `send` gets (or an `error`), so a publisher feeds the same ledger as a
//! WebSocket sender: its acks are expected at every receiver of the conversation, and its bodies
//! carry the send time, so their deliveries count in the end-to-end latency.
//!
//! Publishers are members of the groups the run creates (see `plan`), never
//! subscribe, and are paced by the worker's timer like WebSocket senders: one `Order::Send`, one
//! request. A request that times out is retried with the same `client_id`, as a bot would; the
//! fabric must store it once.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::frames::{stamped_body, unix_nanos, Reply};
use crate::plan::Publisher;
use crate::shared::{Order, Shared};

/// How long one request waits for its reply before it is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per message (the first and its retries).
const ATTEMPTS: u32 = 3;
/// Requests one publisher has in flight at most; further orders wait in its queue (and, once that
/// is full, count as send backlog).
const MAX_IN_FLIGHT: usize = 256;

/// The payload of a post request.
#[derive(Debug, Serialize)]
struct Post<'a> {
    client_id: &'a str,
    body: &'a str,
}

/// Encodes a post request's payload.
fn post_payload(client_id: &str, body: &str) -> Bytes {
    // Only strings: serialization cannot fail.
    Bytes::from(serde_json::to_vec(&Post { client_id, body }).unwrap_or_default())
}

/// Connects a publisher to NATS: its own connection, named after it, with its replies under
/// `_INBOX.<bot>` as a bot confined by `chatfabric bot-user` permissions would have them.
pub(crate) async fn connect(
    url: &str,
    publisher: &Publisher,
) -> anyhow::Result<async_nats::Client> {
    let servers = chatfabric_nats::connect::servers(url).context("--nats-url")?;
    let options = async_nats::ConnectOptions::new()
        .name(&publisher.user)
        .custom_inbox_prefix(format!("_INBOX.{}", publisher.user))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .connection_timeout(Duration::from_secs(10));
    // `user:password@` in the URL: a user allowed to post as the run's bots (see the README).
    chatfabric_nats::connect::with_url_credentials(options, &servers)
        .connect(servers)
        .await
        .with_context(|| {
            format!(
                "connecting NATS publisher {} to {url} (is --nats-url the fabric's NATS server, \
                 with a user allowed chat.in.*.*?)",
                publisher.user
            )
        })
}

/// What became of one post.
struct Outcome {
    conv_idx: u32,
    step: u32,
    written: Instant,
    reply: Result<Bytes, async_nats::RequestError>,
}

/// Runs a publisher until `finish`; returns the posts still waiting for their reply.
pub(crate) async fn run(
    publisher: Publisher,
    shared: Arc<Shared>,
    client: async_nats::Client,
    mut orders: mpsc::Receiver<Order>,
    finish: CancellationToken,
) -> u64 {
    let counters = &shared.counters;
    let mut in_flight = FuturesUnordered::new();
    let mut posts = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = finish.cancelled() => break,
            Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                on_outcome(&shared, outcome);
            }
            order = orders.recv(), if in_flight.len() < MAX_IN_FLIGHT => match order {
                Some(Order::Send) => {
                    let (conv_idx, conv) = &publisher.convs[posts as usize % publisher.convs.len()];
                    posts += 1;
                    // `b` keeps these ids apart from the WebSocket members' `<index>-<n>`.
                    let client_id = format!("b{}-{posts}", publisher.index);
                    let body = stamped_body(unix_nanos(), shared.payload);
                    let subject = format!("chat.in.{conv}.{}", publisher.user);
                    let payload = post_payload(&client_id, &body);
                    counters.sent.fetch_add(1, Relaxed);
                    counters.nats_sent.fetch_add(1, Relaxed);
                    in_flight.push(post(
                        client.clone(),
                        shared.clone(),
                        subject,
                        payload,
                        *conv_idx,
                        shared.step.load(Relaxed),
                    ));
                }
                // A publisher has no session to drop: churn and storms are about connections.
                Some(Order::Drop) => {}
                None => break,
            },
        }
    }
    in_flight.len() as u64
}

/// Posts one message, retrying a request that timed out or was answered `unavailable` with the
/// same payload (so the same `client_id`).
async fn post(
    client: async_nats::Client,
    shared: Arc<Shared>,
    subject: String,
    payload: Bytes,
    conv_idx: u32,
    step: u32,
) -> Outcome {
    let written = Instant::now();
    let mut attempt = 1;
    loop {
        let reply = client.request(subject.clone(), payload.clone()).await;
        match reply {
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut && attempt < ATTEMPTS => {
                attempt += 1;
                shared.counters.resent.fetch_add(1, Relaxed);
            }
            // `unavailable`: not known to be stored; the same client_id again.
            Ok(m) if attempt < ATTEMPTS && unavailable(&m.payload) => {
                attempt += 1;
                shared.counters.unavailable.fetch_add(1, Relaxed);
                shared.counters.resent.fetch_add(1, Relaxed);
            }
            reply => {
                return Outcome {
                    conv_idx,
                    step,
                    written,
                    reply: reply.map(|m| m.payload),
                }
            }
        }
    }
}

fn unavailable(payload: &[u8]) -> bool {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|t| Reply::parse(t).ok())
        .is_some_and(|r| r.op == "error" && r.code.as_deref() == Some("unavailable"))
}

fn on_outcome(shared: &Shared, outcome: Outcome) {
    let counters = &shared.counters;
    let payload = match outcome.reply {
        Ok(payload) => payload,
        Err(e) => {
            counters.send_errors.fetch_add(1, Relaxed);
            let what = match e.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    "no responders on chat.in (is the gateway's ingest service running?)".into()
                }
                _ => e.to_string(),
            };
            shared.note_error(&format!("nats post: {what}"));
            return;
        }
    };
    let text = String::from_utf8_lossy(&payload);
    let reply = match Reply::parse(&text) {
        Ok(reply) => reply,
        Err(e) => {
            counters.send_errors.fetch_add(1, Relaxed);
            shared.note_error(&format!("nats post: unreadable reply ({e})"));
            return;
        }
    };
    match (reply.op.as_ref(), reply.seq) {
        ("ack", Some(seq)) => {
            counters.acked.fetch_add(1, Relaxed);
            counters.nats_acked.fetch_add(1, Relaxed);
            if reply.duplicate == Some(true) {
                counters.ack_duplicates.fetch_add(1, Relaxed);
            }
            let elapsed = outcome.written.elapsed();
            shared.record_ack(elapsed);
            shared.record_nats_ack(elapsed);
            shared.record_acked(outcome.conv_idx, seq, outcome.step);
        }
        _ => {
            // An error reply: the message was not stored, so no receiver expects it.
            counters.send_errors.fetch_add(1, Relaxed);
            shared.note_error(&format!("nats post: {}", reply.error_text()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_payload_is_what_the_ingest_service_reads() {
        let body = stamped_body(7, 30);
        let payload = post_payload("b3-1", &body);
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v, serde_json::json!({"client_id": "b3-1", "body": body}));
        assert_eq!(crate::plan::publisher_id("lt1", 3), "lt1-bot3");
        // The ingest service answers with the gateway's own ack and error frames.
        use chatfabric_gateway::protocol::{self, ErrorCode, ServerFrame};
        let ack = protocol::encode(&ServerFrame::Ack {
            conv: chatfabric_nats::ConvId::new("g1").unwrap(),
            client_id: "b3-1".into(),
            seq: 45,
            duplicate: false,
        });
        let r = Reply::parse(&ack).unwrap();
        assert_eq!(
            (r.op.as_ref(), r.seq, r.duplicate),
            ("ack", Some(45), Some(false))
        );
        let err = protocol::encode(&ServerFrame::Error {
            code: ErrorCode::Forbidden,
            message: "not a member".into(),
            reference: None,
        });
        assert_eq!(
            Reply::parse(&err).unwrap().error_text(),
            "forbidden: not a member"
        );
    }
}
