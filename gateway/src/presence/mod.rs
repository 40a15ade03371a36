//! This gateway's side of presence: which users have connections here, written to the
//! `CHAT_PRESENCE` bucket on change only, a heartbeat that says the gateway is alive, the
//! `presence` query and `typing` events.
//!
//! - **Device keys.** `dev.<user>.<gateway>` exists while the user has at least one connection on
//!   this gateway: put on the first, deleted after the last. Further connections of the same user
//!   write nothing. One writer task sends the changes, pipelined (it does not wait for each
//!   acknowledgement before sending the next), each user's in the order they happened, so a
//!   reconnect cannot be overtaken by the close before it. Its queue is bounded and coalesced
//!   per user ([`changes`]): only a user's latest state is written. A write that fails or is not
//!   acknowledged is tried again a second later, with the user's state then.
//! - **Heartbeat.** `gw.<gateway>` is updated every `heartbeat` with the revision it expects. The
//!   presence service deletes the key when it declares the gateway dead (a crash, or a pause longer
//!   than its timeout, e.g. a lost NATS connection); the next heartbeat then fails its expected
//!   revision, and the gateway re-creates the key and re-asserts every device key, so its users
//!   come back online instead of staying wrongly offline.
//! - **Keys removed behind our back.** The gateway watches its own device keys: one deleted while
//!   the user is still connected here (a presence service buried us on a stale view, an operator
//!   purged it) is written again at once, and every (re)start of that watch re-asserts them all,
//!   since deletions may have passed unseen meanwhile. One present while its user is not
//!   connected here (a delete a replica lost) is deleted again.
//! - **Clean shutdown** deletes the heartbeat: the presence service buries the gateway at once and
//!   its users go offline after the grace unless they reconnected elsewhere.
//!
//! The gateway id is random per process start, so a restarted gateway never inherits the keys of
//! its previous life; those are buried with it.

//!
//! # Layout
//!
//! - `config`: [`PresenceConfig`].
//! - `devices`: connection counts per user and the key writer.
//! - `changes`: the writer's bounded, per-user coalesced queue.
//! - `heartbeat`: the heartbeat key and the watch over this gateway's device keys.
//! - `query`: the `presence` query's answer.
//! - `typing`: `typing` events to a conversation's members.

use std::sync::Arc;

use chatfabric_nats::Fabric;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

pub mod changes;
pub mod config;
pub(crate) mod devices;
mod heartbeat;
pub mod query;
pub mod typing;

pub use config::PresenceConfig;
pub(crate) use devices::Devices;

/// Starts the device-key writer and the key watch on `tracker`, and the heartbeat; all stop on
/// `shutdown`. The heartbeat is returned rather than tracked: it deletes its key when it stops,
/// which must come after the connections drained, so the caller awaits it last.
pub(crate) fn start(
    fabric: &Fabric,
    config: &PresenceConfig,
    metrics: Metrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> (Arc<Devices>, tokio::task::JoinHandle<()>) {
    let devices = Arc::new(Devices::new());
    tracker.spawn(devices::writer(
        devices.clone(),
        fabric.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(heartbeat::guard_keys(
        devices.clone(),
        fabric.presence.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let beat = tokio::spawn(heartbeat::heartbeat(
        devices.clone(),
        fabric.presence.clone(),
        config.heartbeat,
        metrics,
        shutdown,
    ));
    (devices, beat)
}
