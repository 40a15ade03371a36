//! NATS-direct clients (bots, devices): requests on `chat.in.<conv>.<sender>` become stored
//! messages, requests on `chat.read.<conv>.<reader>` return history pages.
//!
//! nats-server permissions bind a bot to its own `<sender>` token and its granted conversations
//! (see `nats/config/auth.conf`), so the subject is the authenticated identity. The service then
//! applies the same rules as the WebSocket path: payload schema and size, client id, membership.
//! Malformed or oversized payloads are rejected with an error reply and counted; they are never
//! stored, so they never reach anyone. Accepted messages take the same path as WebSocket sends
//! (same dedupe id, same ack point), so they get the same ordering, durability, idempotency,
//! history and fan-out. Every gateway process runs the service in one queue group.

use std::sync::Arc;

use bytes::Bytes;
use chatfabric_nats::permissions;
use chatfabric_nats::subject::{self, parse_direct};
use chatfabric_nats::wire::MSG_ID_HEADER;
use chatfabric_nats::{ConvId, UserId};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Deserialize;

use crate::edge;
use crate::protocol::{self, ErrorCode, ServerFrame, DEFAULT_HISTORY_LIMIT};
use crate::service::{Caller, HistoryRequest, SendRequest, ServiceError};
use crate::state::State;

/// The queue group all gateways' ingest services share.
pub const QUEUE_GROUP: &str = "chatfabric-ingest";
/// Requests handled concurrently per gateway.
const CONCURRENCY: usize = 256;

/// The payload of a post on `chat.in.<conv>.<sender>`.
#[derive(Debug, Deserialize)]
pub struct Post {
    /// The idempotency key (or the `Nats-Msg-Id` header).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The text.
    pub body: String,
}

/// The payload of a history request on `chat.read.<conv>.<reader>`: the `history` op's fields.
#[derive(Debug, Deserialize, Default)]
pub struct Read {
    /// Only messages with `seq < before`.
    #[serde(default)]
    pub before: Option<u64>,
    /// Only messages with `seq > after`.
    #[serde(default)]
    pub after: Option<u64>,
    /// Page size.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Decodes a post's payload. Unknown fields are ignored, as in client frames.
pub fn decode_post(payload: &[u8]) -> Result<Post, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// Decodes a history request's payload; an empty payload asks for the newest page.
pub fn decode_read(payload: &[u8]) -> Result<Read, serde_json::Error> {
    if payload.is_empty() {
        return Ok(Read::default());
    }
    serde_json::from_slice(payload)
}

/// Subscribes to the NATS-direct subjects, confirmed by the server (a flush), so that once this
/// returns every request reaches this gateway's queue group; `None` when NATS refused.
pub(crate) async fn subscribe(state: &State) -> Option<Vec<async_nats::Subscriber>> {
    let client = &state.fabric.client;
    let subjects = [
        format!("{}.*.*", subject::IN_PREFIX),
        format!("{}.*.*", subject::READ_PREFIX),
    ];
    let mut subs = Vec::new();
    for s in subjects {
        match client.queue_subscribe(s.clone(), QUEUE_GROUP.into()).await {
            Ok(sub) => subs.push(sub),
            Err(e) => {
                tracing::error!(subject = %s, error = %e, "ingest cannot subscribe; NATS-direct clients are not served");
                return None;
            }
        }
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "ingest subscriptions not confirmed yet");
    }
    Some(subs)
}

/// Serves NATS-direct requests on `subs` until shutdown.
pub(crate) async fn run(state: Arc<State>, subs: Vec<async_nats::Subscriber>) {
    let mut requests = futures::stream::select_all(subs);
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            msg = requests.next(), if in_flight.len() < CONCURRENCY => match msg {
                Some(msg) => in_flight.push(handle(&state, msg)),
                None => break,
            },
        }
    }
    // Answer what was accepted before stopping.
    while in_flight.next().await.is_some() {}
}

/// Why a request gets no answer at all.
const REPLY_REFUSED: &str = "reply_subject";

async fn handle(state: &State, msg: async_nats::Message) {
    let is_post = msg.subject.starts_with(subject::IN_PREFIX);
    // The requester is the subject's last token, which nats-server binds to the bot's user.
    let Some((conv, requester)) = parse_direct(&msg.subject) else {
        return reject(state, "invalid");
    };
    // nats-server checks the subject a bot publishes to, not the reply subject it names: answer
    // only under the requester's own inbox, so no request can make the gateway publish where the
    // bot itself could not receive (a KV key, the JetStream API, a stream, another inbox).
    let reply = match msg.reply.as_deref() {
        Some(reply) if permissions::is_reply_inbox_of(reply, &requester) => Some(reply.to_owned()),
        Some(reply) => {
            // Counted, not logged at warn: a bot could flood the log otherwise.
            tracing::debug!(%requester, %conv, reply, "NATS-direct request with a foreign reply subject dropped");
            return reject(state, REPLY_REFUSED);
        }
        None => None,
    };
    let limits = &state.limits;
    let answer = if !state
        .send_limits
        .allow(&requester, limits.rate, limits.burst)
    {
        Err(Refusal::Ingest(
            ErrorCode::RateLimited,
            "too many requests; slow down".to_string(),
        ))
    } else if is_post {
        post(state, conv, requester, &msg).await
    } else {
        read(state, conv, requester, &msg).await
    };
    let body = match answer {
        Ok(body) => body,
        Err(refusal) => {
            let (code, message) = refusal.into_parts();
            reject(state, code.as_str());
            protocol::encode(&ServerFrame::Error {
                code,
                message,
                reference: None,
            })
        }
    };
    if let Some(reply) = reply {
        if let Err(e) = state.fabric.client.publish(reply, Bytes::from(body)).await {
            tracing::debug!(error = %e, "ingest reply not sent");
        }
    }
}

fn reject(state: &State, kind: &'static str) {
    state
        .metrics
        .ingest_rejected
        .get_or_create(&crate::metrics::Kind { kind })
        .inc();
}

/// An answer's body, or why there is none.
type Answer = Result<String, Refusal>;

/// Why a request was refused: by the ingest itself (payload, rate), or by the service.
enum Refusal {
    Ingest(ErrorCode, String),
    Service(ServiceError),
}

impl From<ServiceError> for Refusal {
    fn from(e: ServiceError) -> Self {
        Self::Service(e)
    }
}

impl Refusal {
    fn into_parts(self) -> (ErrorCode, String) {
        match self {
            Self::Ingest(code, message) => (code, message),
            Self::Service(e) => (edge::code(&e), e.to_string()),
        }
    }
}

async fn post(state: &State, conv: ConvId, sender: UserId, msg: &async_nats::Message) -> Answer {
    if msg.payload.len() > state.limits.max_body * 2 + 1024 {
        return Err(Refusal::Ingest(
            ErrorCode::TooLarge,
            "payload too large".into(),
        ));
    }
    let post = decode_post(&msg.payload).map_err(|e| {
        Refusal::Ingest(
            ErrorCode::Invalid,
            format!("payload must be {{\"client_id\":..,\"body\":..}}: {e}"),
        )
    })?;
    let header_id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(MSG_ID_HEADER))
        .map(|v| v.as_str().to_owned());
    let client_id = post.client_id.or(header_id).ok_or(Refusal::Ingest(
        ErrorCode::Invalid,
        "client_id (or a Nats-Msg-Id header) is required".to_string(),
    ))?;
    let request = SendRequest {
        conv,
        client_id,
        body: post.body,
    };
    let sent = state.service.send(&Caller::Bot(sender), request).await?;
    state.metrics.ingest_accepted.inc();
    Ok(protocol::encode(&edge::ack(sent)))
}

async fn read(state: &State, conv: ConvId, reader: UserId, msg: &async_nats::Message) -> Answer {
    let query = decode_read(&msg.payload)
        .map_err(|e| Refusal::Ingest(ErrorCode::Invalid, e.to_string()))?;
    let request = HistoryRequest {
        conv,
        before: query.before,
        after: query.after,
        limit: query.limit.unwrap_or(DEFAULT_HISTORY_LIMIT),
    };
    // History pages cost more than posts: the per-user history budget of WebSocket and HTTP.
    let page = state
        .service
        .history(&Caller::Bot(reader), &request)
        .await?;
    Ok(protocol::encode_history(&request.conv, &page, None))
}
