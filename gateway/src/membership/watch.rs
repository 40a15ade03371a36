//! The bucket watch: cached answers follow every change within milliseconds, and removals end
//! the removed user's live subscriptions.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use chatfabric_nats::subject::parse_member_key;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use chatfabric_nats::{ConvId, UserId};

use super::reads::Membership;

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
        loop {
            let mut watch = match self.kv.watch("m.>").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "membership watch failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // Whatever changed while we were not watching is unknown: start from a clean cache.
            self.members.invalidate_all();
            loop {
                let entry = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = watch.next() => e,
                };
                match entry {
                    Some(Ok(entry)) => {
                        let Some((conv, user)) = parse_member_key(&entry.key) else {
                            continue;
                        };
                        let member = entry.operation == Operation::Put;
                        self.members
                            .insert((conv.clone(), user.clone()), member)
                            .await;
                        if !member {
                            events.removed(&conv, &user);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "membership watch error; restarting");
                        break;
                    }
                    None => break,
                }
            }
        }
    }
}
