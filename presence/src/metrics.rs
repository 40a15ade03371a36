//! The presence service's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A label naming a transition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transition {
    /// `online` or `offline`.
    pub kind: &'static str,
}

/// Metrics of a presence service.
#[derive(Clone, Debug, Default)]
pub struct PresenceMetrics {
    /// Transitions this instance won and published, by kind.
    pub transitions: Family<Transition, Counter>,
    /// Transitions lost to another instance (or failed writes).
    pub conflicts: Counter,
    /// Gateways declared dead by this instance (and burials repeated for keys left behind).
    pub gateways_buried: Counter,
    /// Watches dropped because they delivered nothing for too long (see `watch_stale`).
    pub watch_restarts: Counter,
    /// Users tracked.
    pub users: Gauge,
    /// Live gateways.
    pub gateways: Gauge,
}

impl PresenceMetrics {
    /// Registers the metrics under the `chatfabric_presence` prefix.
    pub fn register(&self, registry: &mut Registry) {
        // Both kinds exist from the start, so a dashboard's rate reads 0 rather than "no data".
        for kind in ["online", "offline"] {
            let _ = self.transitions.get_or_create(&Transition { kind });
        }
        let r = registry.sub_registry_with_prefix("chatfabric_presence");
        chatfabric_nats::register_metrics!(r;
            "transitions", "Presence transitions published", self.transitions;
            "conflicts", "Presence writes lost to another instance", self.conflicts;
            "gateways_buried", "Gateways declared dead", self.gateways_buried;
            "watch_restarts", "Presence watches replaced because they went silent", self.watch_restarts;
            "users", "Users tracked", self.users;
            "gateways", "Live gateways", self.gateways;
        );
    }

    pub(crate) fn transition(&self, kind: &'static str) {
        self.transitions.get_or_create(&Transition { kind }).inc();
    }
}
