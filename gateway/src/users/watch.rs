//! The watch of the users bucket: every disconnect reaches every gateway.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use chatfabric_nats::subject::parse_disconnect_key;
use chatfabric_nats::wire::UserDisconnect;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::roster::Roster;
use crate::auth::Authenticator;
use crate::metrics::{Kind, Metrics};

/// Watches `users` until `shutdown`: each disconnect closes the user's listed connections
/// (counted in `closes{kind="disconnected"}`) and sets their revocation in `auth`; a deleted key lifts it. A restarted watch replays every
/// key's last value, so what changed while this gateway was cut off is applied then (and what
/// it applied before is applied again, harmlessly: connections opened since are kept).
pub async fn watch(
    users: kv::Store,
    roster: Arc<Roster>,
    auth: Arc<Authenticator>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        let mut watch = match users.watch_with_history("d.*").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "users watch failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = watch.next() => e,
            };
            match entry {
                Some(Ok(entry)) => {
                    let Some(user) = parse_disconnect_key(&entry.key) else {
                        continue;
                    };
                    if entry.operation != Operation::Put {
                        auth.revoke(&user, None);
                        continue;
                    }
                    let Ok(disconnect) = serde_json::from_slice::<UserDisconnect>(&entry.value)
                    else {
                        tracing::warn!(%user, "unreadable disconnect entry; ignored");
                        continue;
                    };
                    auth.revoke(&user, disconnect.tokens_before);
                    let closed = roster.disconnect(&user, &disconnect);
                    let kind = Kind {
                        kind: "disconnected",
                    };
                    metrics.closes.get_or_create(&kind).inc_by(closed as u64);
                    tracing::info!(%user, closed, "user disconnected by the application");
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "users watch error; restarting");
                    break;
                }
                None => break,
            }
        }
    }
}
