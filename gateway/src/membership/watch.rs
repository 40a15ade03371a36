//! The bucket watch: cached answers follow every change within milliseconds, and removals end
//! the removed user's live subscriptions.

use std::sync::Arc;

use async_nats::jetstream::kv::Operation;
use chatfabric_nats::subject::parse_member_key;
use tokio_util::sync::CancellationToken;

use chatfabric_nats::{ConvId, UserId};

use super::reads::Membership;
use crate::follow::{follow, Start};

/// Receives membership removals seen by the watcher (the fan-out ends those subscriptions).
pub trait MembershipEvents: Send + Sync + 'static {
    /// `user` is no longer a member of `conv`.
    fn removed(&self, conv: &ConvId, user: &UserId);
}

impl Membership {
    /// Watches the bucket until `shutdown`: invalidates cached answers and reports removals.
    pub async fn watch(
        self: Arc<Self>,
        events: Arc<dyn MembershipEvents>,
        shutdown: CancellationToken,
    ) {
        let (this, events) = (&self, &events);
        follow(
            &self.kv,
            "m.>",
            Start::Now,
            "membership",
            &shutdown,
            // Whatever changed while we were not watching is unknown: start from a clean cache.
            || this.members.invalidate_all(),
            |entry| async move {
                let Some((conv, user)) = parse_member_key(&entry.key) else {
                    return;
                };
                let member = entry.operation == Operation::Put;
                this.members
                    .insert((conv.clone(), user.clone()), member)
                    .await;
                if !member {
                    events.removed(&conv, &user);
                }
            },
        )
        .await;
    }
}
