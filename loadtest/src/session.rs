//! What a member's sessions share, WebSocket or SSE: the TCP connection from the member's source
//! address, reading a server frame into the ledger and the counters, the sends waiting for their
//! ack, the end of the connection's outage, and how a session ended.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use anyhow::Context;
use tokio::net::{TcpSocket, TcpStream};

use crate::frames::{sent_nanos, unix_nanos, Reply};
use crate::ledger::{Arrival, ReceiverLedger};
use crate::outage::{OutageClock, SLOW_ACK};
use crate::plan::Member;
use crate::shared::Shared;

/// Why a session ended.
pub(crate) enum End {
    /// The run is over.
    Finish,
    /// Dropped on the worker's order (churn, the storm).
    Dropped,
    /// The gateway closed it with this code.
    Closed(u16),
    /// The connection failed or stalled.
    Broken,
}

/// A send waiting for its ack.
pub(crate) struct Pending {
    /// When it was (first) written.
    pub(crate) written: Instant,
    /// The rate step it was sent in.
    pub(crate) step: u32,
    /// Its body, to write again with the same `client_id`.
    pub(crate) body: String,
}

/// A TCP connection to the member's gateway from its source address.
pub(crate) async fn dial(shared: &Shared, member: &Member) -> anyhow::Result<TcpStream> {
    let target = &shared.targets[member.target];
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = member.source {
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("binding source address {source}"))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Ends the connection's outage once it is served again: subscribed, nothing waiting long.
pub(crate) fn settle(
    shared: &Shared,
    outage: &mut OutageClock,
    pending: &HashMap<String, Pending>,
) {
    if outage.running() && !pending.values().any(|p| p.written.elapsed() > SLOW_ACK) {
        if let Some(span) = outage.end() {
            shared.record_outage(span);
        }
    }
}

/// Handles a text frame of a live session (WebSocket text, or an SSE event's data). Returns the
/// client id of a send to write again (it was answered `unavailable`).
pub(crate) fn on_text(
    member: &Member,
    shared: &Shared,
    text: &str,
    ledger: &mut ReceiverLedger,
    pending: &mut HashMap<String, Pending>,
) -> Option<String> {
    let counters = &shared.counters;
    let Ok(reply) = Reply::parse(text) else {
        shared.note_error("unreadable frame from the gateway");
        return None;
    };
    match reply.op.as_ref() {
        "msg" => {
            let (Some(seq), Some(prev)) = (reply.seq, reply.prev) else {
                shared.note_error("msg frame without seq/prev");
                return None;
            };
            match ledger.on_msg(seq, prev) {
                Arrival::Duplicate => {
                    counters.duplicates.fetch_add(1, Relaxed);
                }
                arrival => {
                    if arrival == Arrival::OutOfOrder {
                        counters.order_violations.fetch_add(1, Relaxed);
                    }
                    counters.delivered.fetch_add(1, Relaxed);
                    counters
                        .delivered_bytes
                        .fetch_add(text.len() as u64, Relaxed);
                    if let Some(sent) = reply.body.as_deref().and_then(sent_nanos) {
                        shared.record_e2e(unix_nanos().saturating_sub(sent) / 1000);
                    }
                }
            }
        }
        "ack" => {
            let Some(p) = reply.client_id.as_deref().and_then(|id| pending.remove(id)) else {
                return None; // the ack of a send already acked before a reconnect
            };
            counters.acked.fetch_add(1, Relaxed);
            if reply.duplicate == Some(true) {
                counters.ack_duplicates.fetch_add(1, Relaxed);
            }
            shared.record_ack(p.written.elapsed());
            if let Some(seq) = reply.seq {
                shared.record_acked(member.conv_idx, seq, p.step);
            }
        }
        "error" => {
            // A failed send echoes its client_id as `ref`. `unavailable` means "not known to be
            // stored": retry with the same client_id. Any other code: not stored.
            let retry = reply.code.as_deref() == Some("unavailable");
            if let Some(id) = reply
                .reference
                .as_deref()
                .filter(|r| retry && pending.contains_key(*r))
            {
                counters.unavailable.fetch_add(1, Relaxed);
                return Some(id.to_string());
            }
            if reply
                .reference
                .as_deref()
                .and_then(|r| pending.remove(r))
                .is_some()
            {
                counters.send_errors.fetch_add(1, Relaxed);
            } else {
                counters.errors.fetch_add(1, Relaxed);
            }
            shared.note_error(&reply.error_text());
        }
        _ => {}
    }
    None
}
