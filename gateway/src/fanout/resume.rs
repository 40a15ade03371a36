//! Resumes: what the ring holds is queued at once; older messages become a [`Replay`] that the
//! actor advances one chunk per otherwise idle turn, within the connection's byte budget, until
//! it joins the live list (see the parent module).

use futures::future::BoxFuture;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::actor::{ConvActor, Replay, Sub};
use super::errors::{BoxError, Expired, FanoutError, FeedError};
use super::outlet::{ConnId, Outlet};
use super::shards::REPLAY_CHUNK;
use crate::outbox::{Outbound, Refused};
use crate::protocol::{close, encode, encode_msg, ServerFrame};
use std::sync::Arc;

impl ConvActor {
    /// Queues the `subscribed` frame and what the ring holds after `after`, then adds the
    /// subscriber to the live list; or, when older messages must come from JetStream, starts a
    /// [`Replay`] that joins the live list once it caught up.
    pub(super) async fn attach(
        &mut self,
        outlet: Outlet,
        after: Option<u64>,
        reference: Option<String>,
    ) -> Result<u64, FanoutError> {
        let after = match after {
            Some(after) if after > self.last => {
                // The client has seen more than we have: our head may be stale. Catch up first;
                // a cursor still past the head was never one of this conversation's.
                self.resync()
                    .await
                    .map_err(|e| FanoutError::Unavailable(Arc::new(e)))?;
                if after > self.last {
                    return Err(FanoutError::CursorAhead {
                        after,
                        head: self.last,
                    });
                }
                after
            }
            Some(after) => after,
            None => self.last,
        };
        let subscribed = Utf8Bytes::from(encode(&ServerFrame::Subscribed {
            conv: self.conv.clone(),
            cursor: after,
            reference,
        }));
        let Some(ring) = self.ring_after(after) else {
            self.check_resumable(after).await?;
            if self.queue(&outlet, Outbound::Frame(subscribed)) {
                self.replays.push_back(Replay {
                    outlet,
                    pos: after,
                    parked: false,
                });
            }
            return Ok(after);
        };
        let replayed = ring.len() as u64;
        let mut frames = vec![subscribed];
        frames.extend(ring);
        if self.queue(&outlet, Outbound::Batch(frames)) {
            self.shared.metrics.deliveries.inc_by(replayed);
            // A client may resume ahead of our view: deliver only what follows its cursor.
            self.join(outlet, after.max(self.last));
        }
        Ok(after)
    }

    /// Queues `item` for `outlet`, or closes it as a slow consumer.
    fn queue(&self, outlet: &Outlet, item: Outbound) -> bool {
        match outlet.outbox.push(item) {
            Ok(()) => true,
            Err(Refused::Full) => {
                outlet.outbox.kick(close::SLOW_CONSUMER);
                self.shared.metrics.close("slow_consumer");
                false
            }
            Err(Refused::Closed) => false,
        }
    }

    /// Adds a subscriber that has everything up to `from` to the live list.
    fn join(&mut self, outlet: Outlet, from: u64) {
        self.subs.push(Sub { outlet, from });
    }

    /// The frames of the messages in `(after, last]` if the ring reaches back far enough.
    fn ring_after(&self, after: u64) -> Option<Vec<Utf8Bytes>> {
        if after >= self.last {
            return Some(Vec::new());
        }
        let &(_, first_prev, _) = self.ring.front()?;
        (first_prev <= after).then(|| {
            self.ring
                .iter()
                .filter(|(seq, _, _)| *seq > after)
                .map(|(_, _, f)| f.clone())
                .collect()
        })
    }

    /// Fails unless the messages after `after` are still stored and at most `max_catchup`.
    async fn check_resumable(&self, after: u64) -> Result<(), FanoutError> {
        let fabric = &self.shared.fabric;
        let first = fabric
            .stream_for(&self.conv)
            .get_info()
            .await
            .map_err(|e| unavailable("read the stream's info", e))?
            .state
            .first_sequence;
        if after + 1 < first {
            return Err(FanoutError::CursorExpired(Expired::Retention { first }));
        }
        let max = self.shared.config.max_catchup as u64;
        // Cursors are stream sequences: a distance within the bound needs no count.
        if self.last - after <= max {
            return Ok(());
        }
        let pending = crate::receipts::messages_after(fabric, &self.conv, after)
            .await
            .map_err(|e| unavailable("count the messages after the cursor", e))?;
        if pending > max {
            return Err(FanoutError::CursorExpired(Expired::TooFarBehind { max }));
        }
        Ok(())
    }

    /// Makes the parked replay of `conn` runnable again.
    pub(super) fn unpark(&mut self, conn: ConnId) {
        self.waking.retain(|c| *c != conn);
        for r in self.replays.iter_mut().filter(|r| r.outlet.conn == conn) {
            r.parked = false;
        }
    }

    /// Queues one chunk of the first runnable replay (then moved to the back of the turn order),
    /// and joins it to the live list once it reached `last`. While its connection's queue is over
    /// half full the replay is parked instead, and the waker to await is returned.
    pub(super) async fn replay_step(&mut self) -> Option<BoxFuture<'static, ConnId>> {
        let i = self.replays.iter().position(|r| !r.parked)?;
        let mut replay = self.replays.remove(i)?;
        let outbox = replay.outlet.outbox.clone();
        if !outbox.has_room() {
            replay.parked = true;
            let conn = replay.outlet.conn;
            self.replays.push_back(replay);
            if self.waking.contains(&conn) {
                return None;
            }
            self.waking.push(conn);
            return Some(Box::pin(async move {
                outbox.room().await;
                conn
            }));
        }
        let (frames, done) = match self.ring_after(replay.pos) {
            Some(frames) => (frames, true),
            None => match self
                .fetch_chunk(&mut replay.pos, outbox.chunk_bytes())
                .await
            {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::warn!(error = %e, "replay failed; closing the subscriber so it resumes");
                    replay.outlet.outbox.kick(close::INTERNAL);
                    return None;
                }
            },
        };
        let replayed = frames.len() as u64;
        if !frames.is_empty() && !self.queue(&replay.outlet, Outbound::Batch(frames)) {
            return None;
        }
        self.shared.metrics.deliveries.inc_by(replayed);
        if done {
            self.join(replay.outlet, self.last);
        } else {
            self.replays.push_back(replay);
        }
        None
    }

    /// Frames of up to [`REPLAY_CHUNK`] stored messages after `pos` (advanced past them) and
    /// about `max_bytes`, and whether they reach `last`.
    async fn fetch_chunk(
        &self,
        pos: &mut u64,
        max_bytes: usize,
    ) -> Result<(Vec<Utf8Bytes>, bool), FeedError> {
        let mut frames = Vec::new();
        let mut bytes = 0;
        while frames.len() < REPLAY_CHUNK && bytes < max_bytes {
            match self.next_stored(*pos).await? {
                Some((seq, msg)) if seq <= self.last => {
                    let frame = Utf8Bytes::from(encode_msg(&msg, seq, *pos));
                    bytes += frame.len();
                    frames.push(frame);
                    *pos = seq;
                }
                // Nothing stored in (pos, last]: caught up.
                _ => {
                    *pos = self.last;
                    break;
                }
            }
        }
        self.shared.metrics.fetched.inc_by(frames.len() as u64);
        Ok((frames, *pos >= self.last))
    }
}

fn unavailable(what: &'static str, e: impl Into<BoxError>) -> FanoutError {
    FanoutError::Unavailable(Arc::new(FeedError::nats(what)(e)))
}
