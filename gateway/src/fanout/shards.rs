//! What the hub and every conversation actor share: the shard maps from conversation to actor,
//! the commands an actor takes, and the fan-out's tuning.
//!
//! Every command is sent while holding its shard's lock, and an actor retires only under that
//! lock when it has no subscribers and no queued commands, so a subscribe can never reach a
//! retiring actor.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use chatfabric_nats::{ConvId, Fabric, UserId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::errors::FanoutError;
use super::outlet::{ConnId, Outlet};
use crate::metrics::Metrics;

/// Messages a replay reads from JetStream and queues in one actor turn.
pub const REPLAY_CHUNK: usize = 32;

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

/// What the hub asks of a conversation's actor.
pub(super) enum Cmd {
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

/// One shard: conversations to their actors' command queues.
pub(super) type Shard = Mutex<HashMap<ConvId, mpsc::Sender<Cmd>>>;

/// What the hub and every actor share.
pub(super) struct Shared {
    pub(super) shards: Box<[Shard]>,
    /// Where actors subscribe and read JetStream.
    pub(super) fabric: Fabric,
    pub(super) metrics: Metrics,
    pub(super) config: HubConfig,
    /// Actors are tracked so shutdown can wait for them; they stop on `shutdown`.
    pub(super) tracker: TaskTracker,
    pub(super) shutdown: CancellationToken,
}

impl Shared {
    /// `n` empty shards (at least one).
    pub(super) fn empty_shards(n: usize) -> Box<[Shard]> {
        (0..n.max(1)).map(|_| Mutex::new(HashMap::new())).collect()
    }

    /// The locked shard of `conv`.
    pub(super) fn shard(
        &self,
        conv: &ConvId,
    ) -> std::sync::MutexGuard<'_, HashMap<ConvId, mpsc::Sender<Cmd>>> {
        let mut h = DefaultHasher::new();
        conv.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % self.shards.len()];
        // The maps hold plain senders; no code panics while holding a lock.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every shard, locked one at a time.
    pub(super) fn each_shard(&self, mut f: impl FnMut(&HashMap<ConvId, mpsc::Sender<Cmd>>)) {
        for shard in self.shards.iter() {
            f(&shard.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}
