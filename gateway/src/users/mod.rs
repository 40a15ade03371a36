//! Users' disconnects and token revocations from the server API, on every gateway.
//!
//! The server API writes a user's disconnect to the `CHAT_USERS` bucket (`d.<user>`,
//! [`UserDisconnect`](chatfabric_nats::wire::UserDisconnect)); every gateway watches the bucket,
//! so each learns of it, also after being cut off from NATS for a while (a restarted watch
//! delivers every key's last value again). On each it closes the user's connections that were
//! open at the disconnect's time (or hold a revoked token), and hands the revocation to the
//! [`Authenticator`](crate::auth::Authenticator), which refuses older tokens from then on.
//!
//! # Layout
//!
//! - `roster`: this gateway's open connections per user ([`Roster`]).
//! - `watch`: the bucket watch.

mod roster;
mod watch;

use std::time::Duration;

use async_nats::jetstream::kv;
use chatfabric_nats::provision::{ensure_bucket, users_bucket};
use chatfabric_nats::Fabric;
use tokio_util::sync::CancellationToken;

pub use roster::{Listed, Roster};
pub use watch::watch;

/// Creates (or updates) and opens the users bucket with the deployment's replicas, retrying
/// with backoff while JetStream is not ready (a cluster electing leaders); `None` once
/// `shutdown` fired first. Only gateways use the bucket, so only they provision it.
pub async fn bucket(fabric: &Fabric, shutdown: &CancellationToken) -> Option<kv::Store> {
    let mut wait = Duration::from_millis(100);
    loop {
        match ensure_bucket(&fabric.js, users_bucket(fabric.settings.replicas)).await {
            Ok(store) => return Some(store),
            Err(e) => tracing::warn!(error = %e, "users bucket not ready; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(wait) => wait = (wait * 2).min(Duration::from_secs(5)),
        }
    }
}
