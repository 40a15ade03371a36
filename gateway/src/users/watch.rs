//! The watch of the users bucket: every disconnect reaches every gateway.

use std::sync::Arc;

use async_nats::jetstream::kv::{self, Operation};
use chatfabric_nats::subject::parse_disconnect_key;
use chatfabric_nats::wire::UserDisconnect;
use tokio_util::sync::CancellationToken;

use super::roster::Roster;
use crate::auth::Authenticator;
use crate::follow::{follow, Start};
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
    follow(
        &users,
        "d.*",
        Start::LastValues,
        "users",
        &shutdown,
        || {},
        |entry| {
            let (roster, auth, metrics) = (&roster, &auth, &metrics);
            async move {
                let Some(user) = parse_disconnect_key(&entry.key) else {
                    return;
                };
                if entry.operation != Operation::Put {
                    auth.revoke(&user, None);
                    return;
                }
                let Ok(disconnect) = serde_json::from_slice::<UserDisconnect>(&entry.value) else {
                    tracing::warn!(%user, "unreadable disconnect entry; ignored");
                    return;
                };
                auth.revoke(&user, disconnect.tokens_before);
                let closed = roster.disconnect(&user, &disconnect);
                let kind = Kind {
                    kind: "disconnected",
                };
                metrics.closes.get_or_create(&kind).inc_by(closed as u64);
                tracing::info!(%user, closed, "user disconnected by the application");
            }
        },
    )
    .await;
}
