//! One conversation's actor: its live and ephemeral subscriptions, the chain check, gap fills,
//! encode-once delivery to every local subscriber's outbox (see the parent module).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chatfabric_nats::subject;
use chatfabric_nats::wire::{EphemeralEvent, StoredMessage, LAST_SEQUENCE_HEADER, SEQUENCE_HEADER};
use chatfabric_nats::ConvId;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::errors::{FanoutError, FeedError};
use super::outlet::{ConnId, Outlet};
use super::shards::{Cmd, Shared};
use crate::outbox::{Outbound, Refused};
use crate::protocol::{close, encode, encode_event, encode_msg, ServerFrame};
use crate::stored;

/// A subscription catching up from JetStream before it joins the live list.
pub(super) struct Replay {
    pub(super) outlet: Outlet,
    /// The last cursor queued to the client.
    pub(super) pos: u64,
    /// Waiting for the client to drain its queue.
    pub(super) parked: bool,
}

/// A live subscriber.
pub(super) struct Sub {
    pub(super) outlet: Outlet,
    /// Deliver only messages after this cursor (a client may resume ahead of our view).
    pub(super) from: u64,
}

/// One conversation's delivery task; only it touches its fields.
pub(super) struct ConvActor {
    pub(super) shared: Arc<Shared>,
    pub(super) conv: ConvId,
    /// Our own command sender, to recognise our entry in the shard map when retiring.
    pub(super) me: mpsc::Sender<Cmd>,
    pub(super) msg_subject: String,
    pub(super) subs: Vec<Sub>,
    /// Subscriptions still replaying, in turn order.
    pub(super) replays: VecDeque<Replay>,
    /// The connections with a parked replay and a waker for it (see [`ConvActor::run`]).
    pub(super) waking: Vec<ConnId>,
    /// The conversation's last delivered sequence: the head of the chain we have.
    pub(super) last: u64,
    /// Recent frames `(seq, prev, frame)`, a contiguous piece of the chain ending at `last`.
    pub(super) ring: VecDeque<(u64, u64, Utf8Bytes)>,
}

impl ConvActor {
    pub(super) fn new(shared: Arc<Shared>, conv: ConvId, me: mpsc::Sender<Cmd>) -> Self {
        let msg_subject = shared.fabric.settings.partitions.msg_subject(&conv);
        Self {
            shared,
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

    // A root span: the actor outlives the connection whose subscribe started it, and its events
    // are the conversation's, not that connection's.
    #[tracing::instrument(name = "conversation", parent = None, skip_all, fields(conv = %self.conv))]
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let inner = self.shared.clone();
        let live = inner.fabric.settings.partitions.live_subject(&self.conv);
        // Subscribe before reading the head: whatever is stored after the head then reaches us live.
        let started = async {
            let sub = inner
                .fabric
                .client
                .subscribe(live)
                .await
                .map_err(FeedError::nats("subscribe to the live subject"))?;
            let eph = inner
                .fabric
                .client
                .subscribe(subject::ephemeral_filter(&self.conv))
                .await
                .map_err(FeedError::nats("subscribe to the ephemeral events"))?;
            let head = Box::pin(self.head()).await?;
            Ok::<_, FeedError>((sub, eph, head))
        }
        .await;
        let (mut sub, mut eph, head) = match started {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start conversation feed");
                self.fail_pending(&mut rx, e);
                return;
            }
        };
        self.last = head;
        inner.metrics.live_conversations.inc();
        tracing::debug!(head, "conversation feed started");
        // Resolve with a connection whose queue drained enough for its parked replay to go on.
        // A local, not a field: the futures are not `Sync`, and the actor is borrowed across awaits.
        let mut wakers: FuturesUnordered<BoxFuture<'static, ConnId>> = FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                _ = inner.shutdown.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    // Boxed, like the gap fill and the replay step: the actor's future is as
                    // large as its largest await, and lives as long as the conversation has
                    // local subscribers (BENCHMARKS.md, "Memory per idle connection").
                    Some(cmd) => Box::pin(self.handle(cmd)).await,
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
                    if let Some(waker) = Box::pin(self.replay_step()).await {
                        wakers.push(waker);
                    }
                }
            }
            if self.subs.is_empty() && self.replays.is_empty() && self.retire(&rx) {
                break;
            }
        }
        inner.metrics.live_conversations.dec();
        tracing::debug!(last = self.last, "conversation feed stopped");
        // Unsubscribes from NATS on drop.
        drop(sub);
        drop(eph);
    }

    /// Leaves the shard map if no command is queued. Runs under the shard lock, which every sender
    /// holds while sending, so no command can arrive after we decide to go.
    fn retire(&self, rx: &mpsc::Receiver<Cmd>) -> bool {
        let mut map = self.shared.shard(&self.conv);
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

    fn fail_pending(&self, rx: &mut mpsc::Receiver<Cmd>, error: FeedError) {
        let error = Arc::new(error);
        // Leave the map first so later subscribes start a fresh actor, then answer what is queued.
        {
            let mut map = self.shared.shard(&self.conv);
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
                let _ = reply.send(Err(FanoutError::Unavailable(error.clone())));
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
            self.shared.metrics.gap_fills.inc();
            if let Err(e) = Box::pin(self.fill_to(prev)).await {
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
    async fn fill_to(&mut self, target: u64) -> Result<(), FeedError> {
        let mut attempts = 0;
        while self.last < target {
            match self.next_stored(self.last).await {
                Ok(Some((seq, m))) if seq <= target => {
                    self.shared.metrics.fetched.inc();
                    self.deliver(seq, &m);
                    continue;
                }
                // Nothing between last and target: a replica behind the leader, or a NATS error.
                Ok(_) | Err(_) if attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20 << attempts)).await;
                }
                Ok(_) => return Err(FeedError::Missing(target)),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Delivers whatever was stored after `last` (called when no live message would reveal it).
    pub(super) async fn resync(&mut self) -> Result<(), FeedError> {
        let head = self.head().await?;
        if head > self.last {
            self.shared.metrics.gap_fills.inc();
            self.fill_to(head).await?;
        }
        Ok(())
    }

    /// The conversation's newest stored sequence (0 if it has none), from the stream leader.
    async fn head(&self) -> Result<u64, FeedError> {
        let stream = self.shared.fabric.stream_for(&self.conv);
        match stored::last(stream, &self.msg_subject).await {
            Ok(m) => Ok(m.map_or(0, |m| m.sequence)),
            Err(e) => Err(FeedError::nats("read the conversation's head")(e)),
        }
    }

    /// The first stored message of this conversation after `after`. Messages that do not parse
    /// (only a misbehaving publisher could store one) are skipped, as on the live path.
    pub(super) async fn next_stored(
        &self,
        mut after: u64,
    ) -> Result<Option<(u64, StoredMessage)>, FeedError> {
        let stream = self.shared.fabric.stream_for(&self.conv);
        loop {
            let m = match stored::next(stream, &self.msg_subject, after + 1).await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(None),
                Err(e) => return Err(FeedError::nats("read a stored message")(e)),
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
        let metrics = &self.shared.metrics;
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
        if self.shared.config.ring > 0 {
            if self.ring.len() == self.shared.config.ring {
                self.ring.pop_front();
            }
            self.ring.push_back((seq, self.last, frame));
        }
        self.last = seq;
    }

    /// Forwards a presence, typing or read event to every local subscriber, dropping it for
    /// connections whose queue is full.
    fn on_ephemeral(&mut self, msg: &async_nats::Message) {
        let metrics = &self.shared.metrics;
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

    pub(super) fn kick_all(&mut self, code: u16) {
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
