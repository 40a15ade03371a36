//! chatfabric's presence service: gateway heartbeats and device keys in JetStream KV become
//! online/offline events for the members of each user's conversations.
//!
//! # Layout
//!
//! Its place in the data path: WS connect/close -> gateway writes `dev.<user>.<gateway>` and beats
//! `gw.<gateway>` in the `CHAT_PRESENCE` **KV bucket** -> **presence service** (this crate) ->
//! `user.<user>` (compare-and-set) and `chat.eph.<conv>.presence` -> gateways' conversation actors
//! -> members' connections.
//!
//! - [`tracker`]: the state machine (liveness of gateways and users, grace, burial), no I/O.
//! - [`members`]: user -> conversations, from a watch of `CHAT_CONVS`.
//! - `config`, `metrics`: the service's flags and settings, and its Prometheus metrics.
//! - `service`: the loop: watches, ticks, KV writes with expected revisions, event publishing.
//!
//! Any number of instances may run: each builds the whole state from the buckets, and writes
//! carry the revision they expect, so exactly one instance wins each transition and only the
//! winner publishes its event. Write load is one heartbeat per gateway per interval plus one write
//! per change; it does not grow with idle online users.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod config;
pub mod members;
mod metrics;
mod service;
pub mod tracker;

pub use config::{PresenceArgs, PresenceConfig};
pub use metrics::{PresenceMetrics, Transition};

use chatfabric_nats::Fabric;
use tokio_util::sync::CancellationToken;

/// Runs the presence service until `shutdown`.
pub async fn run(fabric: Fabric, config: PresenceConfig, shutdown: CancellationToken) {
    service::run(fabric, config, shutdown).await
}
