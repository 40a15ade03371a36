//! One WebSocket connection: authenticate, read frames, validate, dispatch, write.
//!
//! The connection task is the only writer of its socket. It selects over: inbound frames, its
//! bounded outbound queue (fed by the fan-out), replies of requests still in flight (sends waiting
//! for their PubAck, subscriptions being set up), a kick (slow consumer, flood), token expiry and
//! shutdown. Requests in flight are capped; past the cap the task stops reading, which pushes back on
//! the client through TCP instead of buffering.

use std::sync::Arc;
use std::time::Instant;

use chatfabric_nats::{ConvId, UserId};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::WaitForCancellationFuture;
use tracing::Instrument;

use crate::auth::Identity;
use crate::fanout::Outlet;
use crate::outbox::{Outbound, Outbox};
use crate::protocol::{self, close, ClientFrame, ErrorCode, ServerFrame};
use crate::rate::{RateLimiter, Verdict};
use crate::send;
use crate::State;

/// The socket type after an HTTP upgrade.
pub(crate) type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;
type Sink = SplitSink<Socket, Message>;

/// What a finished request asks the connection to write.
type Reply = BoxFuture<'static, Option<Utf8Bytes>>;

/// Runs a connection until it closes. `identity` is set when the upgrade carried a valid token.
pub(crate) async fn serve(socket: Socket, identity: Option<Identity>, state: Arc<State>) {
    let conn = state.next_conn();
    state.metrics.connections_total.inc();
    let span = tracing::info_span!("connection", conn, user = tracing::field::Empty);
    run(socket, identity, conn, &state).instrument(span).await;
}

async fn run(socket: Socket, identity: Option<Identity>, conn: u64, state: &Arc<State>) {
    let (mut sink, mut stream) = socket.split();
    let identity = match identity {
        Some(id) => id,
        // Boxed, like the other one-off steps below: a future's size is that of its largest
        // await, and every idle connection would carry this one's space for its whole life.
        None => match Box::pin(authenticate(&mut stream, state)).await {
            Ok(id) => id,
            Err(close) => {
                let closing = Closing::now(close, &state.limits);
                Box::pin(close_with(sink, stream, closing)).await;
                return;
            }
        },
    };
    tracing::Span::current().record("user", tracing::field::display(&identity.user));
    let ready = ServerFrame::Ready {
        user: identity.user.clone(),
        conn,
        reference: None,
    };
    let ready = write(&mut sink, state, "ready", protocol::encode(&ready));
    if !matches!(
        tokio::time::timeout(state.limits.close_grace, ready).await,
        Ok(Ok(()))
    ) {
        return;
    }

    // Counted as a connected device (for presence) until this task ends.
    let _device = state.devices.connect(&identity.user);
    let limits = &state.limits;
    let outbox = Arc::new(Outbox::new(
        limits.queue,
        limits.queue_bytes,
        state.metrics.queued_bytes.clone(),
    ));
    let mut session = Session {
        state: state.clone(),
        outlet: Outlet {
            conn,
            user: identity.user.clone(),
            outbox: outbox.clone(),
        },
        subscribed: Vec::new(),
        rate: RateLimiter::new(limits.rate, limits.burst),
        typing: RateLimiter::new(state.presence.typing_rate, state.presence.typing_burst),
        resubscribe: RateLimiter::new(limits.resubscribe_rate, limits.resubscribe_burst),
        presence: RateLimiter::new(limits.presence_rate, limits.presence_burst),
        listing: RateLimiter::new(limits.listing_rate, limits.listing_burst),
    };
    let mut replies: FuturesUnordered<Reply> = FuturesUnordered::new();
    replies.push(unread_counts(state.clone(), identity.user.clone()));
    let expiry = tokio::time::sleep_until(identity.deadline());
    tokio::pin!(expiry);
    // Created once, not per loop turn: each creation would register and unregister a waiter.
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);

    let closing: Option<Closing> = loop {
        let pending = tokio::select! {
            close = close_requested(state, &outbox, shutdown.as_mut(), expiry.as_mut()) => {
                break Some(Closing::now(close, limits));
            }
            out = outbox.recv() => Pending::Queued(out),
            Some(reply) = replies.next(), if !replies.is_empty() => match reply {
                Some(frame) => Pending::Reply(frame),
                None => continue,
            },
            inbound = stream.next(), if replies.len() < limits.max_in_flight => {
                match inbound {
                    Some(Ok(Message::Text(text))) => match session.on_text(&text) {
                        Step::Reply(frame) => Pending::Reply(frame),
                        Step::Later(fut) => {
                            replies.push(fut);
                            continue;
                        }
                        Step::Close(code, reason) => break Some(Closing::now((code, reason), limits)),
                    },
                    Some(Ok(Message::Binary(_))) => {
                        state.metrics.close("binary");
                        break Some(Closing::now((close::UNSUPPORTED_DATA, "binary frames are not supported; send JSON text"), limits));
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        // tungstenite queued the reply to the client's close: send it.
                        let _ = tokio::time::timeout(limits.close_grace, sink.flush()).await;
                        break None;
                    }
                    // tungstenite answers pings itself; they count against the rate limit.
                    Some(Ok(_)) => match session.control_frame() {
                        Some(close) => break Some(Closing::now(close, limits)),
                        None => continue,
                    },
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                        state.metrics.close("too_big");
                        let closing = Closing::now((close::TOO_BIG, "frame exceeds the size limit"), limits);
                        break Some(Closing { unreadable: true, ..closing });
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "read failed");
                        break None;
                    }
                }
            }
        };
        // Every write races the reasons to close: a client that stopped reading blocks the write,
        // and must not hold the connection open past the close grace.
        let write = write_pending(&mut sink, &outbox, pending);
        tokio::pin!(write);
        tokio::select! {
            written = &mut write => if written.is_err() { break None },
            close = close_requested(state, &outbox, shutdown.as_mut(), expiry.as_mut()) => {
                // Give the client until the deadline to read on, so the close code reaches it
                // after the data (the usual slow-consumer case).
                let closing = Closing::now(close, limits);
                match tokio::time::timeout_at(closing.deadline, write).await {
                    Ok(Ok(())) => break Some(closing),
                    _ => break None,
                }
            }
        }
    };
    outbox.close();
    for conv in &session.subscribed {
        state.hub.unsubscribe(conv, conn);
    }
    if let Some(closing) = closing {
        Box::pin(close_with(sink, stream, closing)).await;
    }
}

/// A close the gateway decided on: the code, its reason, and when the TCP connection ends at the
/// latest.
struct Closing {
    code: u16,
    reason: &'static str,
    deadline: tokio::time::Instant,
    /// The frame stream ended with a read error: the client's close reply cannot be seen.
    unreadable: bool,
}

impl Closing {
    fn now((code, reason): (u16, &'static str), limits: &crate::Limits) -> Self {
        Self {
            code,
            reason,
            deadline: tokio::time::Instant::now() + limits.close_grace,
            unreadable: false,
        }
    }
}

/// Resolves when the connection must close for a reason outside its own frames: a kick (slow
/// consumer, lost feed), the gateway's shutdown, or the token's expiry.
async fn close_requested(
    state: &State,
    outbox: &Outbox,
    shutdown: std::pin::Pin<&mut WaitForCancellationFuture<'_>>,
    expiry: std::pin::Pin<&mut tokio::time::Sleep>,
) -> (u16, &'static str) {
    tokio::select! {
        code = outbox.kicked() => (code, close_reason(code)),
        _ = shutdown => (close::GOING_AWAY, "gateway shutting down; resume elsewhere"),
        _ = expiry => {
            state.metrics.close("unauthorized");
            (close::UNAUTHORIZED, "token expired")
        }
    }
}

/// What the connection loop writes next.
enum Pending {
    /// A reply to one of the client's requests.
    Reply(Utf8Bytes),
    /// An item of the outbound queue (plus whatever else is queued by then).
    Queued(Outbound),
}

async fn write_pending(
    sink: &mut Sink,
    queue: &Outbox,
    pending: Pending,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    match pending {
        Pending::Reply(frame) => send_reply(sink, frame).await,
        Pending::Queued(first) => write_outbound(sink, queue, first).await,
    }
}

/// The `unread` frame sent after `ready`: unread messages per conversation of the user.
fn unread_counts(state: Arc<State>, user: UserId) -> Reply {
    Box::pin(async move {
        // Closed only at shutdown, when nobody waits for the answer.
        let _permit = state.unread_permits.acquire().await.ok()?;
        // Boxed after the permit: in a connect storm thousands of these wait for a permit, and
        // each waits with only this small outer future allocated.
        Box::pin(count_unread(&state, &user)).await
    })
}

async fn count_unread(state: &State, user: &UserId) -> Option<Utf8Bytes> {
    let convs = match state.membership.conv_ids_of(user).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "unread counts unavailable");
            return None;
        }
    };
    let counts = crate::receipts::unread_counts(&state.fabric, user, convs).await;
    state.metrics.frame_out("unread");
    Some(protocol::encode(&ServerFrame::Unread { counts }).into())
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::SLOW_CONSUMER => "slow consumer: outbound queue overflowed; reconnect and resume",
        close::FLOOD => "rate limit exceeded repeatedly",
        close::INTERNAL => "conversation feed interrupted; reconnect and resume",
        _ => "closed by the gateway",
    }
}

/// Waits for the first frame, which must be a valid `auth`; else the close code and reason.
async fn authenticate(
    stream: &mut SplitStream<Socket>,
    state: &State,
) -> Result<Identity, (u16, &'static str)> {
    let first = tokio::select! {
        first = tokio::time::timeout(state.limits.auth_timeout, stream.next()) => first,
        _ = state.shutdown.cancelled() => {
            return Err((close::GOING_AWAY, "gateway shutting down; resume elsewhere"));
        }
    };
    let unauthorized = |reason| {
        state.metrics.close("unauthorized");
        (close::UNAUTHORIZED, reason)
    };
    let first = first.map_err(|_| unauthorized("no auth frame in time"))?;
    let Some(Ok(Message::Text(text))) = first else {
        return Err(unauthorized("expected an auth frame"));
    };
    match protocol::decode(&text) {
        Ok(ClientFrame::Auth { token, .. }) => {
            state
                .metrics
                .frames_in
                .get_or_create(&crate::metrics::Kind { kind: "auth" })
                .inc();
            state.auth.verify(&token).map_err(|e| {
                tracing::debug!(error = %e, "token refused");
                unauthorized("invalid or expired token")
            })
        }
        _ => Err(unauthorized("the first frame must be auth")),
    }
}

async fn write(
    sink: &mut Sink,
    state: &State,
    kind: &'static str,
    frame: String,
) -> Result<(), ()> {
    state.metrics.frame_out(kind);
    sink.send(Message::Text(frame.into())).await.map_err(|_| ())
}

/// Reply frames larger than this go out in fragments of this size, so the socket's write buffer
/// (which keeps its largest size) never holds a whole large reply, such as the listing of a user
/// in thousands of conversations.
const FRAGMENT: usize = 64 * 1024;

/// Writes one reply, fragmented past [`FRAGMENT`] bytes.
async fn send_reply(
    sink: &mut Sink,
    frame: Utf8Bytes,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    if frame.len() <= FRAGMENT {
        return sink.send(Message::Text(frame)).await;
    }
    let bytes = bytes::Bytes::from(frame);
    for start in (0..bytes.len()).step_by(FRAGMENT) {
        let end = (start + FRAGMENT).min(bytes.len());
        let opcode = OpCode::Data(if start == 0 {
            Data::Text
        } else {
            Data::Continue
        });
        let fragment = Frame::message(bytes.slice(start..end), opcode, end == bytes.len());
        sink.feed(Message::Frame(fragment)).await?;
    }
    sink.flush().await
}

/// Writes one queue item plus whatever else is already queued, then flushes once.
async fn write_outbound(
    sink: &mut Sink,
    queue: &Outbox,
    first: Outbound,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut item = Some(first);
    let mut budget = 64;
    while let Some(out) = item.take() {
        match out {
            Outbound::Frame(f) => sink.feed(Message::Text(f)).await?,
            Outbound::Batch(frames) => {
                for f in frames {
                    sink.feed(Message::Text(f)).await?;
                }
            }
        }
        budget -= 1;
        if budget > 0 {
            item = queue.try_recv();
        }
    }
    sink.flush().await
}

/// Sends the close frame, then reads and drops what the client still sends until its close reply
/// (closing TCP with unread data would reset the connection, and the client would lose the close
/// frame), all by the close's deadline; then the connection is dropped.
async fn close_with(mut sink: Sink, mut stream: SplitStream<Socket>, closing: Closing) {
    let frame = CloseFrame {
        code: CloseCode::from(closing.code),
        reason: closing.reason.into(),
    };
    let _ = tokio::time::timeout_at(closing.deadline, async {
        if sink.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        if !closing.unreadable {
            loop {
                match stream.next().await {
                    Some(Ok(_)) => {}
                    None => return,
                    Some(Err(_)) => break,
                }
            }
        }
        // The client's frames cannot be read (the stream ended with an error): drop raw bytes
        // until it closes.
        if let Ok(socket) = sink.reunite(stream) {
            let mut io = socket.into_inner();
            let mut buf = [0u8; 1024];
            while let Ok(1..) = tokio::io::AsyncReadExt::read(&mut io, &mut buf).await {}
        }
    })
    .await;
}

/// What handling one inbound frame asks of the connection loop.
enum Step {
    /// Write this reply now.
    Reply(Utf8Bytes),
    /// A reply will come from this future.
    Later(Reply),
    /// Close the connection.
    Close(u16, &'static str),
}

/// The authenticated part of a connection.
struct Session {
    state: Arc<State>,
    outlet: Outlet,
    /// Conversations this connection subscribed to (unsubscribed on close); subscribing to one
    /// of them again, also after `unsubscribe`, is a re-subscribe.
    subscribed: Vec<ConvId>,
    rate: RateLimiter,
    /// `typing` frames, on top of the general rate limit.
    typing: RateLimiter,
    /// Re-subscribes (each may start a replay), on top of the general rate limit.
    resubscribe: RateLimiter,
    /// `presence` queries, on top of the general rate limit.
    presence: RateLimiter,
    /// `conversations` listings, on top of the general rate limit.
    listing: RateLimiter,
}

impl Session {
    fn user(&self) -> &UserId {
        &self.outlet.user
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>, reference: Option<&str>) -> Step {
        Step::Reply(error_frame(&self.state, code, message, reference))
    }

    fn flood(&self) -> (u16, &'static str) {
        self.state.metrics.close("flood");
        (close::FLOOD, close_reason(close::FLOOD))
    }

    /// A ping or pong control frame. tungstenite answers pings itself, but they count against the
    /// rate limit like any frame: past it they are ignored, and a flood closes the connection.
    fn control_frame(&mut self) -> Option<(u16, &'static str)> {
        match self.rate.check(Instant::now()) {
            Verdict::Flood => Some(self.flood()),
            Verdict::Allow | Verdict::Refuse => None,
        }
    }

    fn on_text(&mut self, text: &str) -> Step {
        let metrics = &self.state.metrics;
        match self.rate.check(Instant::now()) {
            Verdict::Allow => {}
            Verdict::Refuse => {
                return self.error(ErrorCode::RateLimited, "too many frames; slow down", None)
            }
            Verdict::Flood => {
                let (code, reason) = self.flood();
                return Step::Close(code, reason);
            }
        }
        let frame = match protocol::decode(text) {
            Ok(f) => f,
            Err(e) => {
                metrics
                    .frames_in
                    .get_or_create(&crate::metrics::Kind { kind: "invalid" })
                    .inc();
                let reference = protocol::raw_reference(text);
                return self.error(e.code(), e.to_string(), reference.as_deref());
            }
        };
        let reference = protocol::reference_of(&frame).map(str::to_owned);
        if reference.as_ref().is_some_and(|r| r.len() > 64) {
            return self.error(ErrorCode::Invalid, "ref exceeds 64 bytes", None);
        }
        let reference = reference.as_deref();
        metrics
            .frames_in
            .get_or_create(&crate::metrics::Kind {
                kind: op_name(&frame),
            })
            .inc();
        match frame {
            ClientFrame::Auth { .. } => self.error(
                ErrorCode::Unauthenticated,
                "already authenticated",
                reference,
            ),
            ClientFrame::Ping { reference } => {
                Step::Reply(protocol::encode(&ServerFrame::Pong { reference }).into())
            }
            ClientFrame::Send {
                conv,
                client_id,
                body,
            } => self.send(conv, client_id, body),
            ClientFrame::Subscribe {
                conv,
                after,
                reference,
            } => self.subscribe(conv, after, reference),
            ClientFrame::Unsubscribe { conv, reference } => {
                self.state.hub.unsubscribe(&conv, self.outlet.conn);
                Step::Reply(
                    protocol::encode(&ServerFrame::Unsubscribed {
                        conv,
                        reason: "requested".into(),
                        reference,
                    })
                    .into(),
                )
            }
            ClientFrame::History {
                conv,
                before,
                after,
                limit,
                reference,
            } => self.history(conv, before, after, limit, reference),
            ClientFrame::Typing {
                conv,
                state,
                reference,
            } => self.typing(conv, state, reference),
            ClientFrame::Read {
                conv,
                seq,
                reference,
            } => self.read(conv, seq, reference),
            ClientFrame::Presence { user, reference } => {
                if self.presence.check(Instant::now()) != Verdict::Allow {
                    return self.error(
                        ErrorCode::RateLimited,
                        "too many presence queries; slow down",
                        reference.as_deref(),
                    );
                }
                self.presence(user, reference)
            }
            ClientFrame::Conversations { reference, .. }
                if self.listing.check(Instant::now()) != Verdict::Allow =>
            {
                self.error(
                    ErrorCode::RateLimited,
                    "too many conversations listings; slow down",
                    reference.as_deref(),
                )
            }
            other => self.membership_op(other),
        }
    }

    /// A request that needs membership of `conv`: `work` runs once it is confirmed; a refusal, or
    /// a failure `work` reports, becomes an `error` frame echoing `reference`.
    fn as_member<F, Fut>(&self, conv: ConvId, reference: Option<String>, work: F) -> Step
    where
        F: FnOnce(Arc<State>, ConvId, UserId) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Option<Utf8Bytes>, (ErrorCode, String)>>
            + Send
            + 'static,
    {
        let state = self.state.clone();
        let user = self.user().clone();
        Step::Later(Box::pin(async move {
            let result = match state.membership.require_member(&conv, &user).await {
                Ok(()) => work(state.clone(), conv, user).await,
                Err(e) => Err((e.code(), e.to_string())),
            };
            result.unwrap_or_else(|(code, message)| {
                Some(error_frame(&state, code, message, reference.as_deref()))
            })
        }))
    }

    fn send(&mut self, conv: ConvId, client_id: String, body: String) -> Step {
        if let Err(e) = send::validate(&client_id, &body, self.state.limits.max_body) {
            return self.error(e.code(), e.to_string(), Some(&client_id));
        }
        let reference = Some(client_id.clone());
        self.as_member(conv, reference, move |state, conv, user| async move {
            let timeout = state.limits.publish_timeout;
            let reply_id = client_id.clone();
            let published = send::publish(
                &state.fabric,
                &state.metrics,
                conv.clone(),
                user,
                client_id,
                body,
                timeout,
            )
            .await;
            match published {
                Ok(stored) => {
                    state.metrics.frame_out("ack");
                    let ack = ServerFrame::Ack {
                        conv,
                        client_id: reply_id,
                        seq: stored.seq,
                        duplicate: stored.duplicate,
                    };
                    Ok(Some(protocol::encode(&ack).into()))
                }
                Err(e) => {
                    tracing::warn!(conv = %conv, error = %e, "send failed");
                    Err((e.code(), e.to_string()))
                }
            }
        })
    }

    fn subscribe(&mut self, conv: ConvId, after: Option<u64>, reference: Option<String>) -> Step {
        if !self.subscribed.contains(&conv) {
            self.subscribed.push(conv.clone());
        } else if self.resubscribe.check(Instant::now()) != Verdict::Allow {
            return self.error(
                ErrorCode::RateLimited,
                "too many re-subscribes; slow down",
                reference.as_deref(),
            );
        }
        let outlet = self.outlet.clone();
        self.as_member(conv, reference.clone(), move |state, conv, _| async move {
            // On success the fan-out queues the `subscribed` frame itself, ahead of the replay.
            state
                .hub
                .subscribe(&conv, outlet, after, reference)
                .await
                .map(|_| None)
                .map_err(|e| (e.code(), e.to_string()))
        })
    }

    fn history(
        &mut self,
        conv: ConvId,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<usize>,
        reference: Option<String>,
    ) -> Step {
        let limits = &self.state.limits;
        if !self
            .state
            .history_limits
            .allow(self.user(), limits.history_rate, limits.history_burst)
        {
            return self.error(
                ErrorCode::RateLimited,
                "too many history reads; slow down",
                reference.as_deref(),
            );
        }
        self.as_member(conv, reference.clone(), move |state, conv, _| async move {
            let limit = limit.unwrap_or(protocol::DEFAULT_HISTORY_LIMIT);
            let page = state
                .history
                .page(&conv, before, after, limit)
                .await
                .map_err(|e| (e.code(), e.to_string()))?;
            state.metrics.frame_out("history");
            Ok(Some(
                protocol::encode_history(&conv, &page, reference.as_deref()).into(),
            ))
        })
    }

    fn typing(
        &mut self,
        conv: ConvId,
        typing: chatfabric_nats::wire::TypingState,
        reference: Option<String>,
    ) -> Step {
        // Refusals never close the connection: typing is advisory, so it is simply dropped.
        if self.typing.check(Instant::now()) != Verdict::Allow {
            return self.error(
                ErrorCode::RateLimited,
                "too many typing frames; the frame was dropped",
                reference.as_deref(),
            );
        }
        self.as_member(conv, reference, move |state, conv, user| async move {
            let event = chatfabric_nats::wire::EphemeralEvent::Typing {
                conv: conv.clone(),
                user,
                state: typing,
                expires_in: state.presence.typing_ttl.as_millis() as u64,
            };
            let subject = chatfabric_nats::subject::ephemeral_subject(
                &conv,
                chatfabric_nats::subject::Ephemeral::Typing,
            );
            let payload = protocol::encode_event(&event);
            state
                .fabric
                .client
                .publish(subject, payload.into())
                .await
                .map(|()| None)
                .map_err(|e| (ErrorCode::Unavailable, e.to_string()))
        })
    }

    fn read(&mut self, conv: ConvId, seq: u64, reference: Option<String>) -> Step {
        self.as_member(
            conv,
            reference.clone(),
            move |state, conv, user| async move {
                let seq = crate::receipts::mark_read(&state.fabric, &conv, &user, seq)
                    .await
                    .map_err(|e| (e.code(), e.to_string()))?;
                state.metrics.frame_out("read");
                let frame = ServerFrame::Read {
                    conv,
                    user,
                    seq,
                    reference,
                };
                Ok(Some(protocol::encode(&frame).into()))
            },
        )
    }

    fn presence(&mut self, user: UserId, reference: Option<String>) -> Step {
        let state = self.state.clone();
        let me = self.user().clone();
        Step::Later(Box::pin(async move {
            // The same answer whether the user does not exist or shares nothing with the caller:
            // a query must not reveal more than the events would.
            match state.membership.share_a_conversation(&me, &user).await {
                Ok(true) => {}
                Ok(false) => {
                    return Some(error_frame(
                        &state,
                        ErrorCode::Forbidden,
                        "you share no conversation with this user",
                        reference.as_deref(),
                    ))
                }
                Err(e) => {
                    return Some(error_frame(
                        &state,
                        e.code(),
                        e.to_string(),
                        reference.as_deref(),
                    ))
                }
            }
            Some(
                match crate::presence::lookup(&state.fabric.presence, &user).await {
                    Ok(entry) => {
                        state.metrics.frame_out("presence");
                        let online = entry.is_some_and(|e| e.online);
                        let last_seen = if online {
                            Some(chatfabric_nats::wire::now_ms())
                        } else {
                            entry.map(|e| e.last_seen)
                        };
                        protocol::encode(&ServerFrame::Presence {
                            user,
                            online,
                            last_seen,
                            reference,
                        })
                        .into()
                    }
                    Err(e) => error_frame(
                        &state,
                        ErrorCode::Unavailable,
                        e.to_string(),
                        reference.as_deref(),
                    ),
                },
            )
        }))
    }

    fn membership_op(&mut self, frame: ClientFrame) -> Step {
        let state = self.state.clone();
        let me = self.user().clone();
        Step::Later(Box::pin(async move {
            let m = &state.membership;
            let result = match frame {
                ClientFrame::Create {
                    kind,
                    with,
                    members,
                    title,
                    reference,
                } => {
                    let created = match (kind, with) {
                        (chatfabric_nats::wire::ConvKind::Direct, Some(other)) => {
                            m.create_direct(&me, &other).await
                        }
                        (chatfabric_nats::wire::ConvKind::Direct, None) => {
                            Err(crate::membership::MembershipError::Invalid(
                                "a direct conversation needs \"with\"".into(),
                            ))
                        }
                        (chatfabric_nats::wire::ConvKind::Group, _) => {
                            m.create_group(&me, members, title).await
                        }
                    };
                    created
                        .map(|(info, members)| ServerFrame::Conversation {
                            conversation: protocol::ConversationView {
                                conv: info.conv,
                                kind: info.kind,
                                title: info.title,
                            },
                            members,
                            reference: reference.clone(),
                        })
                        .map_err(|e| (e, reference))
                }
                ClientFrame::AddMember {
                    conv,
                    user,
                    reference,
                } => match m.add(&me, &conv, &user).await {
                    Ok(()) => members_frame(m, conv, reference).await,
                    Err(e) => Err((e, reference)),
                },
                ClientFrame::RemoveMember {
                    conv,
                    user,
                    reference,
                } => match m.remove(&me, &conv, &user).await {
                    Ok(()) => members_frame(m, conv, reference).await,
                    Err(e) => Err((e, reference)),
                },
                ClientFrame::Members { conv, reference } => {
                    match m.require_member(&conv, &me).await {
                        Ok(()) => members_frame(m, conv, reference).await,
                        Err(e) => Err((e, reference)),
                    }
                }
                ClientFrame::Conversations {
                    after,
                    limit,
                    reference,
                } => {
                    let limit = limit.unwrap_or(crate::membership::MAX_LISTING_PAGE);
                    m.conversations_page(&me, after.as_ref(), limit)
                        .await
                        .map(|(conversations, next)| ServerFrame::Conversations {
                            conversations,
                            next,
                            reference: reference.clone(),
                        })
                        .map_err(|e| (e, reference))
                }
                _ => return None,
            };
            Some(match result {
                Ok(frame) => {
                    state.metrics.frame_out(frame_name(&frame));
                    protocol::encode(&frame).into()
                }
                Err((e, reference)) => {
                    error_frame(&state, e.code(), e.to_string(), reference.as_deref())
                }
            })
        }))
    }
}

async fn members_frame(
    m: &crate::membership::Membership,
    conv: ConvId,
    reference: Option<String>,
) -> Result<ServerFrame, (crate::membership::MembershipError, Option<String>)> {
    match m.members(&conv).await {
        Ok(members) => Ok(ServerFrame::Members {
            conv,
            members,
            reference,
        }),
        Err(e) => Err((e, reference)),
    }
}

fn error_frame(
    state: &State,
    code: ErrorCode,
    message: impl Into<String>,
    reference: Option<&str>,
) -> Utf8Bytes {
    state.metrics.error(code.as_str());
    state.metrics.frame_out("error");
    protocol::encode(&ServerFrame::Error {
        code,
        message: message.into(),
        reference: reference.map(str::to_owned),
    })
    .into()
}

fn op_name(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Auth { .. } => "auth",
        ClientFrame::Subscribe { .. } => "subscribe",
        ClientFrame::Unsubscribe { .. } => "unsubscribe",
        ClientFrame::Send { .. } => "send",
        ClientFrame::Create { .. } => "create",
        ClientFrame::AddMember { .. } => "add_member",
        ClientFrame::RemoveMember { .. } => "remove_member",
        ClientFrame::Conversations { .. } => "conversations",
        ClientFrame::Members { .. } => "members",
        ClientFrame::History { .. } => "history",
        ClientFrame::Typing { .. } => "typing",
        ClientFrame::Read { .. } => "read",
        ClientFrame::Presence { .. } => "presence",
        ClientFrame::Ping { .. } => "ping",
    }
}

fn frame_name(frame: &ServerFrame) -> &'static str {
    match frame {
        ServerFrame::Ready { .. } => "ready",
        ServerFrame::Subscribed { .. } => "subscribed",
        ServerFrame::Unsubscribed { .. } => "unsubscribed",
        ServerFrame::Ack { .. } => "ack",
        ServerFrame::Conversation { .. } => "conversation",
        ServerFrame::Conversations { .. } => "conversations",
        ServerFrame::Members { .. } => "members",
        ServerFrame::Presence { .. } => "presence",
        ServerFrame::Read { .. } => "read",
        ServerFrame::Unread { .. } => "unread",
        ServerFrame::Pong { .. } => "pong",
        ServerFrame::Error { .. } => "error",
    }
}
