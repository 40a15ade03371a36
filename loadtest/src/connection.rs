//! One member connection: a session (connect, authenticate, subscribe), its traffic, and its
//! resumption from the last seen cursor after every drop, for the whole run.
//!
//! It behaves like a real client behind a load balancer:
//!
//! - **Failover.** A session that fails (refused, closed, broken) is opened again on the next
//!   gateway of `--gateway`, resuming from the last seen cursor, so any gateway may die.
//! - **Stalls.** A gateway that answers nothing, not even WebSocket pings, for [`STALL`] (a
//!   paused process) is given up like a broken one.
//! - **Retries with the same id.** Sends whose ack has not arrived when the session drops are
//!   written again, with the same `client_id`, on the next session, and a send answered
//!   `unavailable` (not known to be stored) is written again at once: the fabric must store each
//!   once (an `ack` with `duplicate: true` for a retry of a stored one), and receivers must see
//!   them once.
//! - **Outages.** The time it was not served is measured (see [`crate::outage`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::frames::{stamped_body, unix_nanos, Reply, Request};
use crate::ledger::ReceiverLedger;
use crate::outage::{OutageClock, SLOW_ACK};
use crate::plan::Member;
use crate::session::{dial, on_text, settle, End, Pending};
use crate::shared::{Order, Shared};

/// How long a session may take to open before it counts as failed.
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts at the first session before the connection gives up (later drops always retry).
const FIRST_SESSION_ATTEMPTS: u32 = 5;
/// Silence after which the connection pings the gateway.
const PING_AFTER: Duration = Duration::from_secs(2);
/// Silence (no frame, no pong) after which the gateway counts as gone.
pub(crate) const STALL: Duration = Duration::from_secs(6);

/// An open session of either kind.
enum Session {
    Ws(Box<WebSocketStream<TcpStream>>),
    Sse(crate::sse::EventStream),
}

/// Runs a member connection until `finish`; returns what it received.
pub(crate) async fn run(
    mut member: Member,
    shared: Arc<Shared>,
    mut orders: mpsc::Receiver<Order>,
    finish: CancellationToken,
) -> (u32, ReceiverLedger, u64) {
    let counters = &shared.counters;
    let mut ledger = ReceiverLedger::default();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut sends = 0u64;
    let mut failures = 0u32;
    let mut first = true;
    let mut outage = OutageClock::default();
    let token = match shared.token_for(&member.user) {
        Ok(t) => t,
        Err(err) => {
            shared.note_error(&format!("minting a token: {err:#}"));
            shared.given_up.fetch_add(1, Relaxed);
            return (member.conv_idx, ledger, 0);
        }
    };
    loop {
        let began = Instant::now();
        let after = ledger.resume_after();
        let opening = async {
            if member.sse {
                let (es, cursor) = crate::sse::open(&shared, &member, &token, after).await?;
                Ok((Session::Sse(es), cursor))
            } else {
                let (ws, cursor) = open(&shared, &member, &token, after).await?;
                Ok((Session::Ws(Box::new(ws)), cursor))
            }
        };
        let session = tokio::select! {
            s = tokio::time::timeout(SESSION_TIMEOUT, opening) => s,
            _ = finish.cancelled() => break,
        };
        let (mut session, cursor) =
            match session.unwrap_or_else(|_| Err(anyhow!("session timed out"))) {
                Ok(s) => s,
                Err(err) => {
                    counters.connect_failures.fetch_add(1, Relaxed);
                    shared.note_error(&format!("{err:#}"));
                    outage.begin(began);
                    fail_over(&mut member, &shared);
                    failures += 1;
                    if first && failures >= FIRST_SESSION_ATTEMPTS {
                        shared.given_up.fetch_add(1, Relaxed);
                        break;
                    }
                    let backoff = Duration::from_millis(100 << failures.min(5))
                        + Duration::from_millis(fastrand::u64(0..100));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => continue,
                        _ = finish.cancelled() => break,
                    }
                }
            };
        failures = 0;
        counters.connects.fetch_add(1, Relaxed);
        shared.record_connect(began.elapsed());
        ledger.on_subscribed(cursor);
        if first {
            shared.subscribed.fetch_add(1, Relaxed);
            first = false;
        } else {
            counters.reconnects.fetch_add(1, Relaxed);
        }
        shared.open.fetch_add(1, Relaxed);
        settle(&shared, &mut outage, &pending);
        let end = match &mut session {
            Session::Ws(ws) => {
                session_loop(
                    &member,
                    &shared,
                    ws,
                    &mut ledger,
                    &mut pending,
                    &mut orders,
                    &finish,
                    &mut sends,
                    &mut outage,
                )
                .await
            }
            Session::Sse(es) => {
                crate::sse::session_loop(&member, &shared, es, &mut ledger, &mut orders, &finish)
                    .await
            }
        };
        shared.open.fetch_sub(1, Relaxed);
        if matches!(end, End::Closed(_) | End::Broken) {
            outage.begin(Instant::now());
            fail_over(&mut member, &shared);
        }
        match end {
            End::Finish => {
                // A polite close; the gateway may already be gone, which changes nothing here.
                if let Session::Ws(ws) = &mut session {
                    if ws.as_mut().close(None).await.is_err() {
                        tracing::trace!("close after finish failed");
                    }
                }
                break;
            }
            End::Dropped => {}
            End::Closed(code) => {
                let counter = match code {
                    4008 => &counters.slow_consumer_closes,
                    1001 => &counters.going_away_closes,
                    _ => &counters.other_closes,
                };
                counter.fetch_add(1, Relaxed);
            }
            End::Broken => {
                counters.other_closes.fetch_add(1, Relaxed);
            }
        }
    }
    if let Some(span) = outage.end() {
        shared.record_outage(span);
    }
    (member.conv_idx, ledger, pending.len() as u64)
}

/// Moves the member to the next gateway, as a load balancer would after a failure.
fn fail_over(member: &mut Member, shared: &Shared) {
    if shared.targets.len() > 1 {
        member.target = (member.target + 1) % shared.targets.len();
        shared.counters.failovers.fetch_add(1, Relaxed);
    }
}

/// Opens a session: TCP from the member's source address, WebSocket upgrade with the token,
/// `ready`, then `subscribe` (resuming after `after`). Returns the subscription's cursor.
async fn open(
    shared: &Shared,
    member: &Member,
    token: &str,
    after: Option<u64>,
) -> anyhow::Result<(WebSocketStream<TcpStream>, u64)> {
    let target = &shared.targets[member.target];
    let stream = dial(shared, member).await?;
    let mut request = target.url.as_str().into_client_request()?;
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    // Small buffers: client memory, not the gateway's, would otherwise cap the connection count
    // (tungstenite reads into 128 KiB by default). A zero write buffer writes each frame at once.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .context("WebSocket upgrade")?;
    expect(&mut ws, "ready").await?;
    let subscribe = Request::Subscribe {
        conv: &member.conv,
        after,
    }
    .encode();
    ws.send(Message::text(subscribe)).await?;
    let cursor = expect(&mut ws, "subscribed").await?;
    Ok((ws, cursor))
}

/// Waits for a reply with `op`; returns its cursor (0 when it has none).
async fn expect(ws: &mut WebSocketStream<TcpStream>, op: &str) -> anyhow::Result<u64> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let reply = Reply::parse(&text).context("unreadable frame")?;
                if reply.op == op {
                    return Ok(reply.cursor.unwrap_or(0));
                }
                if reply.op == "error" {
                    bail!("waiting for {op}: {}", reply.error_text());
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                bail!("closed with {code} while waiting for {op}");
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err).context(format!("waiting for {op}")),
            None => bail!("connection ended while waiting for {op}"),
        }
    }
}

/// Serves one session until it ends.
#[allow(clippy::too_many_arguments)] // the connection's state, borrowed for one session
async fn session_loop(
    member: &Member,
    shared: &Shared,
    ws: &mut WebSocketStream<TcpStream>,
    ledger: &mut ReceiverLedger,
    pending: &mut HashMap<String, Pending>,
    orders: &mut mpsc::Receiver<Order>,
    finish: &CancellationToken,
    sends: &mut u64,
    outage: &mut OutageClock,
) -> End {
    let counters = &shared.counters;
    let mut heard = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (client_id, p) in pending.iter() {
        let frame = Request::Send {
            conv: &member.conv,
            client_id,
            body: &p.body,
        }
        .encode();
        if ws.send(Message::text(frame)).await.is_err() {
            return End::Broken;
        }
        counters.resent.fetch_add(1, Relaxed);
    }
    loop {
        tokio::select! {
            biased;
            _ = finish.cancelled() => return End::Finish,
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    heard = Instant::now();
                    if let Some(client_id) = on_text(member, shared, &text, ledger, pending) {
                        // Not known to be stored: the same client_id again, as a client must.
                        let Some(p) = pending.get(&client_id) else { continue };
                        outage.begin(p.written);
                        let frame = Request::Send { conv: &member.conv, client_id: &client_id, body: &p.body }
                            .encode();
                        counters.resent.fetch_add(1, Relaxed);
                        if ws.send(Message::text(frame)).await.is_err() {
                            return End::Broken;
                        }
                    }
                    settle(shared, outage, pending);
                }
                Some(Ok(Message::Close(frame))) => {
                    return End::Closed(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                }
                Some(Ok(_)) => heard = Instant::now(),
                Some(Err(_)) | None => return End::Broken,
            },
            _ = tick.tick() => {
                if heard.elapsed() > STALL {
                    counters.stalls.fetch_add(1, Relaxed);
                    return End::Broken;
                }
                if heard.elapsed() >= PING_AFTER && ws.send(Message::Ping(Default::default())).await.is_err() {
                    return End::Broken;
                }
                if let Some(oldest) = pending.values().map(|p| p.written).min() {
                    if oldest.elapsed() > SLOW_ACK {
                        outage.begin(oldest);
                    }
                }
            }
            order = orders.recv() => match order {
                Some(Order::Send) => {
                    *sends += 1;
                    let client_id = format!("{}-{}", member.index, sends);
                    let body = stamped_body(unix_nanos(), shared.payload);
                    let frame =
                        Request::Send { conv: &member.conv, client_id: &client_id, body: &body }
                            .encode();
                    let step = shared.step.load(Relaxed);
                    pending.insert(client_id, Pending { written: Instant::now(), step, body });
                    counters.sent.fetch_add(1, Relaxed);
                    if ws.send(Message::text(frame)).await.is_err() {
                        return End::Broken;
                    }
                }
                Some(Order::Drop) => return End::Dropped,
                // The worker is gone: nothing more will be asked; wait for finish.
                None => finish.cancelled().await,
            },
        }
    }
}
