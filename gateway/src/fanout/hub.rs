//! The hub: conversations mapped to their actors, in shards by hash (after centrifuge's hub),
//! and the fan-out's only way in. A conversation without an actor gets one on its first
//! subscribe; see [`shards`](super::shards) for why a subscribe never reaches a retiring actor.

use std::sync::Arc;

use chatfabric_nats::{ConvId, Fabric, UserId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::actor::ConvActor;
use super::errors::{FanoutError, FeedError};
use super::outlet::{ConnId, Outlet};
use super::shards::{Cmd, HubConfig, Shared};
use crate::metrics::Metrics;

/// Routes subscriptions to per-conversation actors. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// Commands queued per conversation actor before `subscribe` answers `unavailable`.
const CMD_QUEUE: usize = 1024;

impl Hub {
    /// A hub whose actors stop when `shutdown` is cancelled.
    pub fn new(
        fabric: Fabric,
        metrics: Metrics,
        config: HubConfig,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                shards: Shared::empty_shards(config.shards),
                fabric,
                metrics,
                config,
                tracker,
                shutdown,
            }),
        }
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
            .map_err(|_| FanoutError::Unavailable(Arc::new(FeedError::Stopped)))?
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
        self.shared.each_shard(|map| {
            for tx in map.values() {
                // A full queue has work queued already, and the actor resyncs after it anyway.
                let _ = tx.try_send(Cmd::Resync);
            }
        });
    }

    fn send(&self, conv: &ConvId, cmd: Cmd, create: bool) -> Result<(), FanoutError> {
        let mut map = self.shared.shard(conv);
        let cmd = match map.get(conv) {
            Some(tx) => match tx.try_send(cmd) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(FanoutError::Busy),
                // The actor ended without retiring (shutdown or a NATS failure): replace it.
                Err(mpsc::error::TrySendError::Closed(cmd)) => cmd,
            },
            None => cmd,
        };
        if !create || self.shared.shutdown.is_cancelled() {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel(CMD_QUEUE);
        // A fresh channel has room for one command.
        let _ = tx.try_send(cmd);
        map.insert(conv.clone(), tx.clone());
        let actor = ConvActor::new(self.shared.clone(), conv.clone(), tx);
        self.shared.tracker.spawn(actor.run(rx));
        Ok(())
    }
}
