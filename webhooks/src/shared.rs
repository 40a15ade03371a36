//! What every follower and delivery of the role shares, and the hand-off of an event to every URL.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WebhookConfig;
use crate::endpoint::{self, Endpoint, Event};
use crate::metrics::Metrics;
use crate::{directory, pending};

/// What every follower and delivery shares.
pub(crate) struct Shared {
    /// For acks and progress.
    pub(crate) client: async_nats::Client,
    /// The settings.
    pub(crate) config: WebhookConfig,
    /// The held messages.
    pub(crate) inflight: Arc<pending::InFlight>,
    /// Members and presence.
    pub(crate) directory: directory::Directory,
    /// One per URL.
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    /// Delivery tasks, waited for (bounded) at shutdown.
    pub(crate) tasks: TaskTracker,
    /// Cancelled to stop.
    pub(crate) shutdown: CancellationToken,
    /// Metrics.
    pub(crate) metrics: Metrics,
}

impl Shared {
    /// Hands `event` to every URL; its messages are acked when the last one is done.
    pub(crate) async fn dispatch(&self, event: Event) {
        let event = Arc::new(event);
        for endpoint in &self.endpoints {
            endpoint.submit(Arc::clone(&event), &self.tasks, &self.shutdown);
        }
        endpoint::release(event).await;
    }
}
