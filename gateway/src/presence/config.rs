//! [`PresenceConfig`].

use std::time::Duration;

/// Presence and ephemeral-event settings of a gateway.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// How often the gateway's heartbeat key is refreshed. Must be well below the presence
    /// service's gateway timeout (10 s by default).
    pub heartbeat: Duration,
    /// Sustained `typing` frames per second per connection.
    pub typing_rate: f64,
    /// `typing` burst per connection.
    pub typing_burst: f64,
    /// How long receivers treat a `typing` `start` as valid without another one.
    pub typing_ttl: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            typing_rate: 1.0,
            typing_burst: 5.0,
            typing_ttl: Duration::from_secs(6),
        }
    }
}
