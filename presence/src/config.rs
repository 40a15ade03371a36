//! The presence service's flags and the settings they become.

use std::time::Duration;

use crate::metrics::PresenceMetrics;

/// Flags of `chatfabric presence` (each with a `CHATFABRIC_*` environment twin).
#[derive(Debug, Clone, clap::Args)]
pub struct PresenceArgs {
    /// A gateway whose heartbeat is older than this (ms) is dead; its users go offline after
    /// --offline-grace-ms more unless connected elsewhere. Keep it well above the gateways'
    /// heartbeat interval (2 s).
    #[arg(long, env = "CHATFABRIC_GATEWAY_TIMEOUT_MS", default_value_t = 10_000)]
    pub gateway_timeout_ms: u64,
    /// A user without connections goes offline after this long (ms); reconnecting within it is
    /// invisible to others.
    #[arg(long, env = "CHATFABRIC_OFFLINE_GRACE_MS", default_value_t = 3_000)]
    pub offline_grace_ms: u64,
}

impl PresenceArgs {
    /// The service configuration these flags describe (metrics fresh; register them).
    pub fn config(&self) -> PresenceConfig {
        PresenceConfig {
            gateway_timeout: Duration::from_millis(self.gateway_timeout_ms),
            offline_grace: Duration::from_millis(self.offline_grace_ms),
            ..PresenceConfig::default()
        }
    }
}

/// How the service detects failures. A crashed gateway's users go offline within
/// `gateway_timeout + offline_grace + tick` (13.5 s by default).
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Heartbeat age after which a gateway is dead.
    pub gateway_timeout: Duration,
    /// Time without connections before a user goes offline.
    pub offline_grace: Duration,
    /// How often timers are checked.
    pub tick: Duration,
    /// A presence watch that delivered nothing for this long (the service writes a probe key
    /// three times as often) is presumed stalled and replaced by a fresh read of the bucket.
    /// Capped at half the gateway timeout, so a stall is noticed before anyone is buried for it.
    pub watch_stale: Duration,
    /// The service's metrics.
    pub metrics: PresenceMetrics,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            gateway_timeout: Duration::from_secs(10),
            offline_grace: Duration::from_secs(3),
            tick: Duration::from_millis(500),
            watch_stale: Duration::from_secs(3),
            metrics: PresenceMetrics::default(),
        }
    }
}
