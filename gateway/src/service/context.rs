//! [`Service`]: the domain parts every operation uses, the service's limits, and the membership
//! check most operations start with.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use chatfabric_nats::{ConvId, Fabric};

use crate::fanout::Hub;
use crate::history::History;
use crate::membership::{ClientMembership, Membership};
use crate::metrics::Metrics;
use crate::rate::UserLimits;

use super::caller::Caller;
use super::error::ServiceError;

/// The service's limits, from the gateway's.
#[derive(Debug, Clone)]
pub struct ServiceLimits {
    /// Largest message body, in bytes.
    pub max_body: usize,
    /// Time a send may take before `unavailable` (lost PubAcks are retried within it).
    pub publish_timeout: Duration,
    /// History pages per second per user, sustained, whichever front end asks.
    pub history_rate: f64,
    /// History pages a user may read in a burst.
    pub history_burst: f64,
    /// How long receivers treat a `typing` start as valid.
    pub typing_ttl: Duration,
    /// What clients may do to membership themselves (the server API may do everything).
    pub client_membership: ClientMembership,
}

/// The operations of the gateway, shared by every front end. Cheap to share behind an `Arc`.
pub struct Service {
    pub(super) fabric: Fabric,
    pub(super) hub: Hub,
    pub(super) membership: Arc<Membership>,
    pub(super) history: History,
    pub(super) metrics: Metrics,
    pub(super) limits: ServiceLimits,
    /// Users' disconnects and revocations (`CHAT_USERS`), written by the server API.
    pub(super) users: kv::Store,
    /// Per-user limits of history reads (all front ends together).
    pub(super) history_limits: UserLimits,
}

impl Service {
    /// The service over the gateway's domain parts.
    pub fn new(
        fabric: Fabric,
        hub: Hub,
        membership: Arc<Membership>,
        history: History,
        metrics: Metrics,
        limits: ServiceLimits,
        users: kv::Store,
    ) -> Self {
        Self {
            fabric,
            hub,
            membership,
            history,
            metrics,
            limits,
            users,
            history_limits: UserLimits::new(),
        }
    }

    /// Fails unless the caller is a member of `conv` (also when `conv` does not exist). A
    /// service is a member of nothing and may use every conversation: for it, `conv` must only
    /// exist. A client with a service id may use none.
    pub(super) async fn require_member(
        &self,
        caller: &Caller,
        conv: &ConvId,
    ) -> Result<(), ServiceError> {
        match caller {
            Caller::Service(_) => {
                self.membership.info(conv).await?;
                Ok(())
            }
            _ if caller.acting_as().is_service() => Err(ServiceError::ServiceId),
            _ => Ok(self
                .membership
                .require_member(conv, caller.acting_as())
                .await?),
        }
    }
}
