//! Server-sent events: a user's conversations as a `text/event-stream`, with resume.
//!
//! `GET /v1/events` (all the user's conversations, at most [`MAX_CONVERSATIONS`]) or
//! `GET /v1/events?conv=a&conv=b`. The stream subscribes through the same fan-out as WebSocket
//! connections, so it has the same order, gap-freeness and slow-consumer handling.
//!
//! Every `msg` event's `id:` is a composite cursor, `conv:seq` pairs joined by `,`, covering every
//! conversation of the stream. A browser's EventSource sends the last one back as
//! `Last-Event-ID` when it reconnects, and the stream resumes each conversation after its cursor.
//! Comment heartbeats keep proxies from closing idle streams. A slow reader gets an `error`
//! event (`slow_consumer`) and the stream ends; the client reconnects and resumes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chatfabric_nats::ConvId;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::query;
use super::reply::{bearer, json_error, service_error, Abort, Body};
use crate::fanout::Outlet;
use crate::outbox::{Outbound, Outbox};
use crate::protocol::{close, ErrorCode, ServerOp};
use crate::service::Caller;
use crate::state::State;

/// Most conversations one event stream carries (the composite cursor grows with them).
pub const MAX_CONVERSATIONS: usize = 100;
/// Interval of comment heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// The reconnect delay suggested to EventSource, in ms.
const RETRY_MS: u64 = 2000;

/// Parses a composite cursor `conv:seq,conv:seq`. Unparsable parts are ignored.
pub fn parse_cursor(id: &str) -> BTreeMap<ConvId, u64> {
    id.split(',')
        .filter_map(|part| {
            let (conv, seq) = part.split_once(':')?;
            Some((ConvId::new(conv.trim()).ok()?, seq.trim().parse().ok()?))
        })
        .collect()
}

/// Formats a composite cursor.
pub fn format_cursor(cursors: &BTreeMap<ConvId, u64>) -> String {
    let mut out = String::with_capacity(cursors.len() * 24);
    for (i, (conv, seq)) in cursors.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(conv.as_str());
        out.push(':');
        out.push_str(&seq.to_string());
    }
    out
}

/// `GET /v1/events`.
pub(crate) async fn events(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Body>, http::Error> {
    let query = match query::events_query(req.uri().query().unwrap_or_default()) {
        Ok(q) => q,
        Err(e) => return json_error(ErrorCode::Invalid, &e.to_string()),
    };
    // Browsers' EventSource cannot send headers: the token may come in the query (it then shows
    // in access logs; prefer the header where the client allows it).
    let token = bearer(&req).map(str::to_owned).or(query.token);
    let wanted = query.convs;
    let identity = match token.map(|t| state.auth.verify(&t)) {
        Some(Ok(id)) => id,
        _ => {
            return json_error(
                ErrorCode::Unauthenticated,
                "missing, invalid or expired token",
            )
        }
    };
    let user = identity.user.clone();
    let caller = Caller::User(user.clone());
    let convs = match state.service.followed(&caller, wanted).await {
        Ok(convs) => convs,
        Err(e) => return service_error(&e),
    };
    if convs.len() > MAX_CONVERSATIONS {
        return json_error(
            ErrorCode::TooLarge,
            "an event stream carries at most 100 conversations; name them with conv=",
        );
    }
    let resume = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(parse_cursor)
        .unwrap_or_default();

    let Some(slot) = state.capacity.admit(&state.metrics.sse_streams) else {
        state.metrics.close("capacity");
        return json_error(ErrorCode::Unavailable, "gateway at capacity; try another");
    };
    let conn = state.next_conn();
    let outbox = Arc::new(Outbox::new(
        state.limits.queue,
        state.limits.queue_bytes,
        state.metrics.queued_bytes.clone(),
    ));
    let outlet = Outlet {
        conn,
        user: user.clone(),
        outbox: outbox.clone(),
    };
    for conv in &convs {
        let after = resume.get(conv).copied();
        let subscribed = state
            .service
            .subscribe(&caller, conv, outlet.clone(), after, None)
            .await;
        if let Err(e) = subscribed {
            for c in &convs {
                state.service.unsubscribe(c, conn);
            }
            return service_error(&e);
        }
    }
    drop(outlet);

    // A small bounded body channel: a client that stops reading fills it, then the outbound
    // queue, and the fan-out closes it as slow.
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(8);
    let task_state = state.clone();
    // An open event stream is a connected device for presence, like a WebSocket.
    let device = state.devices.connect(&user);
    let listed = state.roster.list(&identity, conn, &outbox);
    let abort = req.extensions().get::<Abort>().cloned();
    let expiry = identity.deadline();
    state.tracker.spawn(async move {
        let held = (device, listed, slot);
        let end = pump(&task_state, &outbox, body_tx, resume, expiry).await;
        outbox.close();
        for c in &convs {
            task_state.service.unsubscribe(c, conn);
        }
        drop(held);
        // The stream ended; a client that does not read it to the end loses its connection once
        // the grace is over.
        if let (Some(abort), Some(deadline)) = (abort, end) {
            tokio::select! {
                _ = abort.0.cancelled() => {}
                _ = tokio::time::sleep_until(deadline) => abort.0.cancel(),
            }
        }
    });
    let stream = futures::stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(BodyExt::boxed(StreamBody::new(stream)))
}

#[derive(Deserialize)]
struct Head<'a> {
    op: &'a str,
    #[serde(borrow)]
    conv: std::borrow::Cow<'a, str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    cursor: Option<u64>,
}

/// Turns queued frames into events until the client leaves, is kicked, its token expires, or the
/// gateway stops. Returns when the connection must be gone at the latest (`None`: it is already).
async fn pump(
    state: &State,
    outbox: &Outbox,
    body: mpsc::Sender<Bytes>,
    mut cursors: BTreeMap<ConvId, u64>,
    expiry: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    if body
        .send(Bytes::from(format!("retry: {RETRY_MS}\n\n")))
        .await
        .is_err()
    {
        return None;
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let grace = state.limits.close_grace;
    let expired = tokio::time::sleep_until(expiry);
    tokio::pin!(expired);
    loop {
        let chunk = tokio::select! {
            code = end_requested(state, outbox, expired.as_mut()) => {
                let deadline = tokio::time::Instant::now() + grace;
                let _ = tokio::time::timeout_at(deadline, body.send(error_event(code))).await;
                return Some(deadline);
            }
            _ = body.closed() => return None,
            _ = heartbeat.tick() => Bytes::from_static(b": heartbeat\n\n"),
            out = outbox.recv() => match out {
                Outbound::Frame(f) => event(&mut cursors, &f),
                Outbound::Batch(frames) => {
                    let mut all = Vec::new();
                    for f in frames {
                        all.extend_from_slice(&event(&mut cursors, &f));
                    }
                    Bytes::from(all)
                }
                // Only a WebSocket's outbox carries replies and tungstenite's bytes.
                Outbound::Reply(_) | Outbound::Raw(_) => continue,
            },
        };
        let send = body.send(chunk);
        tokio::pin!(send);
        tokio::select! {
            sent = &mut send => if sent.is_err() { return None },
            // Ending while the reader is not reading (the slow-consumer case): as on WebSocket,
            // give it `close_grace` to read on, so the error event reaches it after the data.
            code = end_requested(state, outbox, expired.as_mut()) => {
                let deadline = tokio::time::Instant::now() + grace;
                let _ = tokio::time::timeout_at(deadline, async {
                    if send.await.is_ok() {
                        let _ = body.send(error_event(code)).await;
                    }
                })
                .await;
                return Some(deadline);
            }
        }
    }
}

/// Resolves with the close code once the stream must end: kicked (slow consumer, lost feed), the
/// token expired, or the gateway is stopping.
async fn end_requested(
    state: &State,
    outbox: &Outbox,
    expired: std::pin::Pin<&mut tokio::time::Sleep>,
) -> u16 {
    tokio::select! {
        code = outbox.kicked() => code,
        _ = expired => close::UNAUTHORIZED,
        _ = state.shutdown.cancelled() => close::GOING_AWAY,
    }
}

fn error_event(code: u16) -> Bytes {
    let reason = match code {
        close::SLOW_CONSUMER => "slow_consumer",
        close::UNAUTHORIZED => "unauthenticated",
        close::GOING_AWAY => "going_away",
        close::DISCONNECTED => "disconnected",
        _ => "closed",
    };
    Bytes::from(format!("event: error\ndata: {{\"code\":\"{reason}\"}}\n\n"))
}

/// One frame as an event, advancing the composite cursor.
fn event(cursors: &mut BTreeMap<ConvId, u64>, frame: &str) -> Bytes {
    let Ok(head) = serde_json::from_str::<Head<'_>>(frame) else {
        return Bytes::new();
    };
    let Ok(conv) = ConvId::new(head.conv.as_ref()) else {
        return Bytes::new();
    };
    // Only messages and subscription starts are positions in a conversation; ephemeral events
    // (a `read` frame's `seq` is someone's read cursor) leave the resume cursor alone.
    if head.op == ServerOp::Msg.name() || head.op == ServerOp::Subscribed.name() {
        if let Some(seq) = head.seq.or(head.cursor) {
            cursors.insert(conv, seq);
        }
    }
    let id = format_cursor(cursors);
    Bytes::from(format!("id: {id}\nevent: {}\ndata: {frame}\n\n", head.op))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_ignore_garbage() {
        let c = parse_cursor("a:1,b-2:42, junk ,c.d:3,e:x");
        assert_eq!(c.len(), 2);
        assert_eq!(format_cursor(&c), "a:1,b-2:42");
        assert_eq!(parse_cursor(&format_cursor(&c)), c);
    }

    #[test]
    fn events_carry_the_composite_cursor() {
        let mut cursors = BTreeMap::new();
        let sub = event(&mut cursors, r#"{"op":"subscribed","conv":"a","cursor":5}"#);
        assert!(std::str::from_utf8(&sub)
            .unwrap()
            .starts_with("id: a:5\nevent: subscribed\n"));
        let msg = event(&mut cursors, r#"{"op":"msg","conv":"b","seq":9,"prev":0}"#);
        let text = std::str::from_utf8(&msg).unwrap();
        assert!(
            text.starts_with("id: a:5,b:9\nevent: msg\ndata: {"),
            "{text}"
        );
        assert!(text.ends_with("}\n\n"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any composite cursor survives formatting and parsing, cursors up to u64::MAX
            /// included; any header value parses without panicking into valid ids only.
            #[test]
            fn cursors_round_trip(
                cursors in proptest::collection::btree_map("[A-Za-z0-9_-]{1,64}", any::<u64>(), 0..20),
                garbage in "\\PC{0,200}",
            ) {
                let cursors: BTreeMap<ConvId, u64> = cursors
                    .into_iter()
                    .map(|(c, s)| (ConvId::new(c).unwrap(), s))
                    .collect();
                prop_assert_eq!(parse_cursor(&format_cursor(&cursors)), cursors);
                for conv in parse_cursor(&garbage).keys() {
                    prop_assert!(ConvId::new(conv.as_str()).is_ok());
                }
            }
        }
    }
}
