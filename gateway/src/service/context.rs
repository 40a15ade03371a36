//! [`Service`]: the domain parts every operation uses, the service's limits, and the membership
//! check most operations start with.

use std::sync::Arc;
use std::time::Duration;

use chatfabric_nats::{ConvId, Fabric};

use crate::fanout::Hub;
use crate::history::History;
use crate::membership::Membership;
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
}

/// The operations of the gateway, shared by every front end. Cheap to share behind an `Arc`.
pub struct Service {
    pub(super) fabric: Fabric,
    pub(super) hub: Hub,
    pub(super) membership: Arc<Membership>,
    pub(super) history: History,
    pub(super) metrics: Metrics,
    pub(super) limits: ServiceLimits,
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
    ) -> Self {
        Self {
            fabric,
            hub,
            membership,
            history,
            metrics,
            limits,
            history_limits: UserLimits::new(),
        }
    }

    /// Fails unless the caller is a member of `conv` (also when `conv` does not exist).
    pub(super) async fn require_member(
        &self,
        caller: &Caller,
        conv: &ConvId,
    ) -> Result<(), ServiceError> {
        Ok(self
            .membership
            .require_member(conv, caller.acting_as())
            .await?)
    }
}
