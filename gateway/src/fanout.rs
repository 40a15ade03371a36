//! Fan-out: one NATS subscription per conversation with local subscribers, gap-free delivery.
//!
//! Each conversation with at least one local subscriber has one actor task ([`ConvActor`]) that owns
//! the conversation's core NATS subscription on `chat.live.<part>.<conv>`, the list of local
//! subscribers, and the conversation's delivery cursor `last`. Because one task does all of a
//! conversation's work, ordering needs no locks:
//!
//! - **Chain check.** JetStream's `republish` stamps every live copy with `Nats-Sequence` and
//!   `Nats-Last-Sequence` (the previous sequence of the same conversation). A copy whose
//!   `Nats-Last-Sequence` is not `last` reveals a gap (the subscription dropped messages, or NATS
//!   reconnected); the actor fetches the missing messages from JetStream (direct get, servable by any
//!   replica) and delivers them before the live one. Copies at or below `last` are duplicates and
//!   are dropped.
//! - **Encode once.** Each message is encoded into one `msg` frame whose bytes are shared by every
//!   local subscriber (and kept in a small ring for cheap resumes).
//! - **Resume.** A subscription with a cursor gets the messages after it, then joins the live list,
//!   all inside the actor, so nothing can slip in between. What the ring holds is queued at once.
//!   Older messages are a [`Replay`]: each actor turn without live work or commands replays one
//!   chunk ([`REPLAY_CHUNK`] messages from JetStream) of one replay, round robin, and only while
//!   the connection's queue is at most half full; otherwise the replay waits, without holding the
//!   actor, for the client to read. A replay that reaches `last` joins the live list in the same
//!   turn. So a long resume costs others at most one chunk's latency, and its memory is bounded by
//!   the connection's queue.
//! - **Slow clients.** Frames go to each connection's bounded queue (frames and bytes) without
//!   waiting; a full queue gets the connection closed with [`close::SLOW_CONSUMER`], and the actor
//!   never waits for it.
//!
//! - **Ephemeral events.** The actor also owns the conversation's `chat.eph.<conv>.*` subscription
//!   (presence, typing, read receipts). Each event is parsed, checked to belong to this
//!   conversation, re-encoded once and `try_send` to every local subscriber. They are at most once
//!   by nature, so a full queue drops the event for that connection (counted) instead of closing it.
//!   Only subscribers, who are members, receive them: that is the privacy rule for events.
//!
//! The hub maps conversations to actors in shards (by hash), like centrifuge's hub. Every command is
//! sent while holding the shard lock, and an actor retires only under that lock when it has no
//! subscribers and no queued commands, so a subscribe can never reach a retiring actor.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::stream::DirectGetErrorKind;
use chatfabric_nats::subject;
use chatfabric_nats::wire::{EphemeralEvent, StoredMessage, LAST_SEQUENCE_HEADER, SEQUENCE_HEADER};
use chatfabric_nats::{ConvId, Fabric, UserId};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
pub use crate::outbox::Outbound;
use crate::outbox::{Outbox, Refused};
use crate::protocol::{close, encode, encode_event, encode_msg, ErrorCode, ServerFrame};
use resume::Replay;

mod resume;

/// A connection's id, unique within a gateway process.
pub type ConnId = u64;

/// Why a subscription could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The cursor is older than the stream's retention, or too far behind to replay.
    #[error(
        "cursor is too old to resume from ({0}); read history, then subscribe with a newer cursor"
    )]
    CursorExpired(String),
    /// NATS or JetStream could not be reached.
    #[error("message stream unavailable: {0}")]
    Unavailable(String),
    /// The conversation's command queue is full; retry shortly.
    #[error("gateway busy; retry")]
    Busy,
    /// The cursor is past the conversation's newest message: it was never handed out for this
    /// conversation.
    #[error("cursor {after} is past the conversation's newest message ({head})")]
    CursorAhead {
        /// The cursor asked for.
        after: u64,
        /// The newest message's `seq`.
        head: u64,
    },
}

impl FanoutError {
    /// The client-facing error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::CursorExpired(_) => ErrorCode::CursorExpired,
            Self::Unavailable(_) | Self::Busy => ErrorCode::Unavailable,
            Self::CursorAhead { .. } => ErrorCode::Invalid,
        }
    }
}

/// The fan-out's handle on one connection.
#[derive(Clone)]
pub struct Outlet {
    /// The connection.
    pub conn: ConnId,
    /// Its authenticated user.
    pub user: UserId,
    /// Its bounded outbound queue, and how to close it.
    pub outbox: Arc<Outbox>,
}

/// Tuning of the fan-out.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Recent frames kept per conversation for resumes without a JetStream round trip.
    pub ring: usize,
    /// Most messages replayed on a resume before `cursor_expired`.
    pub max_catchup: usize,
    /// Hub shards (mutex-protected maps).
    pub shards: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            ring: 32,
            max_catchup: 10_000,
            shards: 64,
        }
    }
}

enum Cmd {
    Subscribe {
        outlet: Outlet,
        after: Option<u64>,
        reference: Option<String>,
        reply: oneshot::Sender<Result<u64, FanoutError>>,
    },
    Unsubscribe {
        conn: ConnId,
    },
    Evict {
        user: UserId,
    },
    Resync,
}

type Shard = Mutex<HashMap<ConvId, mpsc::Sender<Cmd>>>;

/// Routes subscriptions to per-conversation actors. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    shards: Box<[Shard]>,
    fabric: Fabric,
    metrics: Metrics,
    config: HubConfig,
    // Actors are tracked so shutdown can wait for them; they stop on `shutdown`.
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Commands queued per conversation actor before `subscribe` answers `unavailable`.
const CMD_QUEUE: usize = 1024;

/// Messages a replay reads from JetStream and queues in one actor turn.
pub const REPLAY_CHUNK: usize = 32;

impl Hub {
    /// A hub whose actors stop when `shutdown` is cancelled.
    pub fn new(
        fabric: Fabric,
        metrics: Metrics,
        config: HubConfig,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let shards = (0..config.shards.max(1))
            .map(|_| Mutex::new(HashMap::new()))
            .collect();
        Self {
            inner: Arc::new(HubInner {
                shards,
                fabric,
                metrics,
                config,
                tracker,
                shutdown,
            }),
        }
    }

    fn shard(&self, conv: &ConvId) -> &Shard {
        let mut h = DefaultHasher::new();
        conv.hash(&mut h);
        &self.inner.shards[(h.finish() as usize) % self.inner.shards.len()]
    }

    /// Subscribes `outlet` to `conv`. On success the outlet's queue receives, in order and before any
    /// live message, the `subscribed` frame (echoing `reference`) and the messages after `after`.
    /// Returns the cursor the subscription starts after. The caller has checked membership.
    pub async fn subscribe(
        &self,
        conv: &ConvId,
        outlet: Outlet,
        after: Option<u64>,
        reference: Option<String>,
    ) -> Result<u64, FanoutError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Subscribe {
            outlet,
            after,
            reference,
            reply,
        };
        self.send(conv, cmd, true)?;
        rx.await
            .map_err(|_| FanoutError::Unavailable("gateway shutting down".into()))?
    }

    /// Ends `conn`'s subscription to `conv` (no-op if none).
    pub fn unsubscribe(&self, conv: &ConvId, conn: ConnId) {
        let _ = self.send(conv, Cmd::Unsubscribe { conn }, false);
    }

    /// Ends every local subscription of `user` to `conv` (the user was removed).
    pub fn evict(&self, conv: &ConvId, user: &UserId) {
        let _ = self.send(conv, Cmd::Evict { user: user.clone() }, false);
    }

    /// Makes every actor check JetStream for messages it may have missed (after a NATS reconnect
    /// or a slow-consumer drop, when no later message would reveal the gap).
    pub fn resync_all(&self) {
        for shard in self.inner.shards.iter() {
            let map = shard.lock().unwrap_or_else(|p| p.into_inner());
            for tx in map.values() {
                let _ = tx.try_send(Cmd::Resync);
            }
        }
    }

    fn send(&self, conv: &ConvId, cmd: Cmd, create: bool) -> Result<(), FanoutError> {
        let mut map = self.shard(conv).lock().unwrap_or_else(|p| p.into_inner());
        let cmd = match map.get(conv) {
            Some(tx) => match tx.try_send(cmd) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(FanoutError::Busy),
                // The actor ended without retiring (shutdown or a NATS failure): replace it.
                Err(mpsc::error::TrySendError::Closed(cmd)) => cmd,
            },
            None => cmd,
        };
        if !create || self.inner.shutdown.is_cancelled() {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel(CMD_QUEUE);
        // A fresh channel has room for one command.
        let _ = tx.try_send(cmd);
        map.insert(conv.clone(), tx.clone());
        let actor = ConvActor::new(self.clone(), conv.clone(), tx);
        self.inner.tracker.spawn(actor.run(rx));
        Ok(())
    }
}

struct Sub {
    outlet: Outlet,
    /// Deliver only messages after this cursor (a client may resume ahead of our view).
    from: u64,
}

struct ConvActor {
    hub: Hub,
    conv: ConvId,
    /// Our own command sender, to recognise our entry in the shard map when retiring.
    me: mpsc::Sender<Cmd>,
    msg_subject: String,
    subs: Vec<Sub>,
    /// Subscriptions still replaying, in turn order.
    replays: VecDeque<Replay>,
    /// The connections with a parked replay and a waker for it (see [`ConvActor::run`]).
    waking: Vec<ConnId>,
    /// The conversation's last delivered sequence: the head of the chain we have.
    last: u64,
    /// Recent frames `(seq, prev, frame)`, a contiguous piece of the chain ending at `last`.
    ring: VecDeque<(u64, u64, Utf8Bytes)>,
}

impl ConvActor {
    fn new(hub: Hub, conv: ConvId, me: mpsc::Sender<Cmd>) -> Self {
        let msg_subject = hub.inner.fabric.settings.partitions.msg_subject(&conv);
        Self {
            hub,
            conv,
            me,
            msg_subject,
            subs: Vec::new(),
            replays: VecDeque::new(),
            waking: Vec::new(),
            last: 0,
            ring: VecDeque::new(),
        }
    }

    #[tracing::instrument(name = "conversation", skip_all, fields(conv = %self.conv))]
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let inner = self.hub.inner.clone();
        let live = inner.fabric.settings.partitions.live_subject(&self.conv);
        // Subscribe before reading the head: whatever is stored after the head then reaches us live.
        let started = async {
            let sub = inner
                .fabric
                .client
                .subscribe(live)
                .await
                .map_err(|e| e.to_string())?;
            let eph = inner
                .fabric
                .client
                .subscribe(subject::ephemeral_filter(&self.conv))
                .await
                .map_err(|e| e.to_string())?;
            let head = self.head().await?;
            Ok::<_, String>((sub, eph, head))
        }
        .await;
        let (mut sub, mut eph, head) = match started {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start conversation feed");
                self.fail_pending(&mut rx, &e);
                return;
            }
        };
        self.last = head;
        inner.metrics.live_conversations.inc();
        // Resolve with a connection whose queue drained enough for its parked replay to go on.
        // A local, not a field: the futures are not `Sync`, and the actor is borrowed across awaits.
        let mut wakers: FuturesUnordered<BoxFuture<'static, ConnId>> = FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                _ = inner.shutdown.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                msg = sub.next() => match msg {
                    Some(msg) => self.on_live(msg).await,
                    None => {
                        tracing::warn!("live subscription closed");
                        self.kick_all(close::INTERNAL);
                        break;
                    }
                },
                msg = eph.next() => match msg {
                    Some(msg) => self.on_ephemeral(&msg),
                    None => {
                        tracing::warn!("ephemeral subscription closed");
                        self.kick_all(close::INTERNAL);
                        break;
                    }
                },
                Some(conn) = wakers.next(), if !wakers.is_empty() => self.unpark(conn),
                // Lowest priority: one chunk of one replay when nothing else is waiting.
                _ = std::future::ready(()), if self.replays.iter().any(|r| !r.parked) => {
                    if let Some(waker) = self.replay_step().await {
                        wakers.push(waker);
                    }
                }
            }
            if self.subs.is_empty() && self.replays.is_empty() && self.retire(&rx) {
                break;
            }
        }
        inner.metrics.live_conversations.dec();
        // Unsubscribes from NATS on drop.
        drop(sub);
        drop(eph);
    }

    /// Leaves the shard map if no command is queued. Runs under the shard lock, which every sender
    /// holds while sending, so no command can arrive after we decide to go.
    fn retire(&self, rx: &mpsc::Receiver<Cmd>) -> bool {
        let mut map = self
            .hub
            .shard(&self.conv)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !rx.is_empty() {
            return false;
        }
        if map
            .get(&self.conv)
            .is_some_and(|tx| tx.same_channel(&self.me))
        {
            map.remove(&self.conv);
        }
        true
    }

    fn fail_pending(&self, rx: &mut mpsc::Receiver<Cmd>, error: &str) {
        // Leave the map first so later subscribes start a fresh actor, then answer what is queued.
        {
            let mut map = self
                .hub
                .shard(&self.conv)
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if map
                .get(&self.conv)
                .is_some_and(|tx| tx.same_channel(&self.me))
            {
                map.remove(&self.conv);
            }
        }
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            if let Cmd::Subscribe { reply, .. } = cmd {
                let _ = reply.send(Err(FanoutError::Unavailable(error.to_string())));
            }
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Subscribe {
                outlet,
                after,
                reference,
                reply,
            } => {
                self.subs.retain(|s| s.outlet.conn != outlet.conn);
                self.replays.retain(|r| r.outlet.conn != outlet.conn);
                let result = self.attach(outlet, after, reference).await;
                // The connection may be gone already; then there is nobody to tell.
                let _ = reply.send(result);
            }
            Cmd::Unsubscribe { conn } => {
                self.subs.retain(|s| s.outlet.conn != conn);
                self.replays.retain(|r| r.outlet.conn != conn);
            }
            Cmd::Evict { user } => {
                let frame = Utf8Bytes::from(encode(&ServerFrame::Unsubscribed {
                    conv: self.conv.clone(),
                    reason: "removed".into(),
                    reference: None,
                }));
                let evict = |outlet: &Outlet| {
                    if outlet.user != user {
                        return true;
                    }
                    if outlet.outbox.push(Outbound::Frame(frame.clone())).is_err() {
                        outlet.outbox.kick(close::SLOW_CONSUMER);
                    }
                    false
                };
                self.subs.retain(|s| evict(&s.outlet));
                self.replays.retain(|r| evict(&r.outlet));
            }
            Cmd::Resync => {
                if let Err(e) = self.resync().await {
                    tracing::warn!(error = %e, "resync failed; closing subscribers so they resume");
                    self.kick_all(close::INTERNAL);
                }
            }
        }
    }

    async fn on_live(&mut self, msg: async_nats::Message) {
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .and_then(|v| v.as_str().parse::<u64>().ok())
        };
        let Some(seq) = header(SEQUENCE_HEADER) else {
            tracing::warn!("live message without {SEQUENCE_HEADER}; ignored");
            return;
        };
        if seq <= self.last {
            return; // a duplicate of something already delivered (e.g. fetched by a gap fill)
        }
        let prev = header(LAST_SEQUENCE_HEADER).unwrap_or(0);
        if prev > self.last {
            self.hub.inner.metrics.gap_fills.inc();
            if let Err(e) = self.fill_to(prev).await {
                tracing::warn!(error = %e, prev, last = self.last, "gap fill failed; closing subscribers so they resume");
                self.kick_all(close::INTERNAL);
                return;
            }
        }
        match serde_json::from_slice::<StoredMessage>(&msg.payload) {
            Ok(m) => self.deliver(seq, &m),
            Err(e) => {
                tracing::error!(seq, error = %e, "stored message does not parse; skipped");
                self.last = seq;
            }
        }
    }

    /// Delivers every stored message in `(last, target]`, or fails.
    async fn fill_to(&mut self, target: u64) -> Result<(), String> {
        let mut attempts = 0;
        while self.last < target {
            match self.next_stored(self.last).await {
                Ok(Some((seq, m))) if seq <= target => {
                    self.hub.inner.metrics.fetched.inc();
                    self.deliver(seq, &m);
                    continue;
                }
                // Nothing between last and target: a replica behind the leader, or a NATS error.
                Ok(_) | Err(_) if attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20 << attempts)).await;
                }
                Ok(_) => return Err(format!("messages up to {target} not found")),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Delivers whatever was stored after `last` (called when no live message would reveal it).
    async fn resync(&mut self) -> Result<(), String> {
        let head = self.head().await?;
        if head > self.last {
            self.hub.inner.metrics.gap_fills.inc();
            self.fill_to(head).await?;
        }
        Ok(())
    }

    /// The conversation's newest stored sequence (0 if it has none).
    async fn head(&self) -> Result<u64, String> {
        let stream = self.hub.inner.fabric.stream_for(&self.conv);
        match stream.direct_get_last_for_subject(&self.msg_subject).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The first stored message of this conversation after `after`. Messages that do not parse
    /// (only a misbehaving publisher could store one) are skipped, as on the live path.
    async fn next_stored(&self, mut after: u64) -> Result<Option<(u64, StoredMessage)>, String> {
        let stream = self.hub.inner.fabric.stream_for(&self.conv);
        loop {
            let m = match stream
                .direct_get_next_for_subject(&self.msg_subject, Some(after + 1))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            match serde_json::from_slice::<StoredMessage>(&m.payload) {
                Ok(msg) => return Ok(Some((m.sequence, msg))),
                Err(e) => {
                    tracing::error!(seq = m.sequence, error = %e, "stored message does not parse; skipped");
                    after = m.sequence;
                }
            }
        }
    }

    fn deliver(&mut self, seq: u64, m: &StoredMessage) {
        let frame = Utf8Bytes::from(encode_msg(m, seq, self.last));
        let metrics = &self.hub.inner.metrics;
        let mut delivered = 0;
        self.subs.retain(|s| {
            if seq <= s.from {
                return true;
            }
            match s.outlet.outbox.push(Outbound::Frame(frame.clone())) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                Err(Refused::Full) => {
                    s.outlet.outbox.kick(close::SLOW_CONSUMER);
                    metrics.close("slow_consumer");
                    false
                }
                Err(Refused::Closed) => false,
            }
        });
        metrics.deliveries.inc_by(delivered);
        if self.hub.inner.config.ring > 0 {
            if self.ring.len() == self.hub.inner.config.ring {
                self.ring.pop_front();
            }
            self.ring.push_back((seq, self.last, frame));
        }
        self.last = seq;
    }

    /// Forwards a presence, typing or read event to every local subscriber, dropping it for
    /// connections whose queue is full.
    fn on_ephemeral(&mut self, msg: &async_nats::Message) {
        let metrics = &self.hub.inner.metrics;
        let kind = subject::ephemeral_kind(msg.subject.as_str());
        let event = match serde_json::from_slice::<EphemeralEvent>(&msg.payload) {
            Ok(e) if e.conv() == &self.conv && kind.is_some_and(|k| kind_of(&e) == k) => e,
            _ => {
                metrics.ephemeral_invalid.inc();
                return;
            }
        };
        let frame = Utf8Bytes::from(encode_event(&event));
        let (mut delivered, mut dropped) = (0, 0);
        self.subs.retain(|s| {
            match s.outlet.outbox.push(Outbound::Frame(frame.clone())) {
                Ok(()) => delivered += 1,
                Err(Refused::Full) => dropped += 1,
                Err(Refused::Closed) => return false,
            }
            true
        });
        metrics.ephemeral_deliveries.inc_by(delivered);
        metrics.ephemeral_dropped.inc_by(dropped);
    }

    fn kick_all(&mut self, code: u16) {
        for s in self.subs.drain(..) {
            s.outlet.outbox.kick(code);
        }
        for r in self.replays.drain(..) {
            r.outlet.outbox.kick(code);
        }
        self.ring.clear();
    }
}

fn kind_of(event: &EphemeralEvent) -> subject::Ephemeral {
    match event {
        EphemeralEvent::Presence { .. } => subject::Ephemeral::Presence,
        EphemeralEvent::Typing { .. } => subject::Ephemeral::Typing,
        EphemeralEvent::Read { .. } => subject::Ephemeral::Read,
    }
}
