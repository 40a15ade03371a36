//! One WebSocket connection's socket task: authenticate, read frames, hand them to its
//! [`Session`] (which validates and dispatches them), write.
//!
//! Every write goes through the connection's [`Outbox`]: the fan-out's frames, which it writes
//! straight to the socket when nothing is queued, replies, and tungstenite's pongs and close
//! frames. The task selects over: inbound frames, writing what the socket did not take at once,
//! replies of requests still in flight (sends waiting for their PubAck, subscriptions being set
//! up), a kick (slow consumer, flood), token expiry and shutdown. Requests in flight are capped,
//! and no request is read while a reply waits for the socket; so a client that does not read is
//! pushed back on through TCP instead of buffered for.

use std::sync::Arc;

use futures::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::WaitForCancellationFuture;
use tracing::Instrument;

use super::io::SocketIo;
use super::session::{Reply, Session, Step};
use crate::auth::Identity;
use crate::capacity::Slot;
use crate::config::Limits;
use crate::fanout::Outlet;
use crate::outbox::{Outbound, Outbox};
use crate::protocol::{self, close, ClientFrame, ClientOp, ServerFrame, ServerOp};
use crate::service::Caller;
use crate::state::State;

/// The socket type after an HTTP upgrade.
pub(crate) type Socket = WebSocketStream<SocketIo>;
type Sink = SplitSink<Socket, Message>;

/// The connection's future: runs it until it closes. `outbox` writes to the socket; `identity`
/// is set when the upgrade carried a valid token; `slot` is the connection's place in the
/// gateway's capacity, held until the end.
///
/// A plain function around one `async fn`, spawned as a task of its own: every value passed
/// into an async fn by value keeps its place in the future for as long as the future lives, so
/// each layer between the upgrade and this loop would make every idle connection carry the
/// socket, the identity and the upgrade's locals once more (BENCHMARKS.md, "Memory per idle
/// connection").
pub(crate) fn serve(
    socket: Socket,
    outbox: Arc<Outbox>,
    identity: Option<Identity>,
    slot: Slot,
    state: Arc<State>,
) -> impl std::future::Future<Output = ()> + Send {
    let conn = state.next_conn();
    state.metrics.connections_total.inc();
    let span = tracing::info_span!("connection", conn, user = tracing::field::Empty);
    run(socket.split(), outbox, identity, conn, slot, state).instrument(span)
}

async fn run(
    (mut sink, mut stream): (Sink, SplitStream<Socket>),
    outbox: Arc<Outbox>,
    identity: Option<Identity>,
    conn: u64,
    _slot: Slot,
    state: Arc<State>,
) {
    let state = &state;
    let limits = &state.limits;
    let identity = match identity {
        Some(id) => id,
        // Boxed, like the other one-off steps below: a future's size is that of its largest
        // await, and every idle connection would carry this one's space for its whole life.
        None => match Box::pin(authenticate(&mut stream, state)).await {
            Ok(id) => id,
            Err(close) => {
                let closing = Closing::now(close, limits);
                Box::pin(close_with(sink, stream, &outbox, closing)).await;
                return;
            }
        },
    };
    tracing::Span::current().record("user", tracing::field::display(&identity.user));
    if !announce(&outbox, &identity, conn, state) {
        return;
    }

    // Counted as a connected device (for presence) until this task ends.
    let _device = state.devices.connect(&identity.user);
    // Closed by the application's disconnects (server API) until this task ends.
    let _listed = state.roster.list(&identity, conn, &outbox);
    let mut session = Session::new(
        state.clone(),
        Outlet {
            conn,
            user: identity.user.clone(),
            outbox: outbox.clone(),
        },
    );
    let mut replies: FuturesUnordered<Reply> = FuturesUnordered::new();
    replies.push(unread_counts(
        state.clone(),
        Caller::User(identity.user.clone()),
    ));
    let expiry = tokio::time::sleep_until(identity.deadline());
    tokio::pin!(expiry);
    // Created once, not per loop turn: each creation would register and unregister a waiter.
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);

    let closing: Option<Closing> = loop {
        let reply = tokio::select! {
            close = close_requested(state, &outbox, shutdown.as_mut(), expiry.as_mut()) => {
                break Some(Closing::now(close, limits));
            }
            written = outbox.flush_some() => match written {
                Ok(()) => continue,
                Err(_) => break None,
            },
            // One reply at a time waits for the socket; the others wait where they are.
            Some(reply) = replies.next(), if !replies.is_empty() && !outbox.reply_queued() => match reply {
                Some(frame) => frame,
                None => continue,
            },
            inbound = stream.next(), if replies.len() < limits.max_in_flight && !outbox.reply_queued() => {
                match inbound {
                    Some(Ok(Message::Text(text))) => match session.on_text(&text) {
                        Step::Reply(frame) => frame,
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
                        let _ = tokio::time::timeout(limits.close_grace, async {
                            let _ = sink.flush().await;
                            outbox.flush_all().await
                        }).await;
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
        if outbox.push_unbounded(Outbound::Reply(reply)).is_err() {
            break None;
        }
    };
    outbox.close();
    for conv in &session.subscribed {
        state.service.unsubscribe(conv, conn);
    }
    if let Some(closing) = closing {
        Box::pin(close_with(sink, stream, &outbox, closing)).await;
    }
}

/// Queues the `ready` frame; false when the connection is already gone. A function of its own:
/// written in the connection's future, the frame would keep a place there for the connection's
/// life.
fn announce(outbox: &Outbox, identity: &Identity, conn: u64, state: &State) -> bool {
    let ready = ServerFrame::Ready {
        user: identity.user.clone(),
        conn,
        reference: None,
    };
    state.metrics.frame_out(ServerOp::Ready.name());
    outbox
        .push_unbounded(Outbound::Reply(protocol::encode(&ready).into()))
        .is_ok()
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
    fn now((code, reason): (u16, &'static str), limits: &Limits) -> Self {
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
        code = outbox.kicked() => (code, close::reason(code)),
        _ = shutdown => (close::GOING_AWAY, "gateway shutting down; resume elsewhere"),
        _ = expiry => {
            state.metrics.close("unauthorized");
            (close::UNAUTHORIZED, "token expired")
        }
    }
}

/// The `unread` frame sent after `ready`: unread messages per conversation of the user.
fn unread_counts(state: Arc<State>, caller: Caller) -> Reply {
    Box::pin(async move {
        // Closed only at shutdown, when nobody waits for the answer.
        let _permit = state.unread_permits.acquire().await.ok()?;
        // Boxed after the permit: in a connect storm thousands of these wait for a permit, and
        // each waits with only this small outer future allocated.
        Box::pin(count_unread(&state, &caller)).await
    })
}

async fn count_unread(state: &State, caller: &Caller) -> Option<Utf8Bytes> {
    let counts = match state.service.unread(caller).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::warn!(error = %e, "unread counts unavailable");
            return None;
        }
    };
    state.metrics.frame_out(ServerOp::Unread.name());
    Some(protocol::encode(&ServerFrame::Unread { counts }).into())
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
                .get_or_create(&crate::metrics::Kind {
                    kind: ClientOp::Auth.name(),
                })
                .inc();
            state.auth.verify(&token).map_err(|e| {
                tracing::debug!(error = %e, "token refused");
                unauthorized("invalid or expired token")
            })
        }
        _ => Err(unauthorized("the first frame must be auth")),
    }
}

/// Sends the close frame, then reads and drops what the client still sends until its close reply
/// (closing TCP with unread data would reset the connection, and the client would lose the close
/// frame), all by the close's deadline; then the connection is dropped.
async fn close_with(
    mut sink: Sink,
    mut stream: SplitStream<Socket>,
    outbox: &Outbox,
    closing: Closing,
) {
    let frame = CloseFrame {
        code: CloseCode::from(closing.code),
        reason: closing.reason.into(),
    };
    let _ = tokio::time::timeout_at(closing.deadline, async {
        if sink.send(Message::Close(Some(frame))).await.is_err()
            || outbox.flush_all().await.is_err()
        {
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
