//! Rate limiting: a token bucket over inbound frames, per connection or per user.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatfabric_nats::UserId;

/// A token bucket: `rate` frames per second on average, bursts up to `burst`.
///
/// A client that keeps exceeding the rate is told to stop: more than `burst` refusals within
/// [`FLOOD_WINDOW`] (whether in a row or spread between accepted frames) make the verdict
/// [`Verdict::Flood`]. So a burst of twice the bucket closes at once, and a client sending more
/// than `rate + burst / 10` frames per second for 10 s is closed too.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Start of the current window of refusals.
    window: Instant,
    /// Refusals since `window`.
    refused: u32,
}

/// The window over which refusals are counted towards [`Verdict::Flood`].
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);

/// What the limiter says about one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Allow,
    /// Refuse it with `rate_limited`.
    Refuse,
    /// The client keeps flooding: close the connection.
    Flood,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
            window: Instant::now(),
            refused: 0,
        }
    }

    /// Takes one token at `now`. More than `burst` refusals within [`FLOOD_WINDOW`] make the
    /// verdict [`Verdict::Flood`].
    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Allow
        } else {
            if now.saturating_duration_since(self.window) >= FLOOD_WINDOW {
                self.window = now;
                self.refused = 0;
            }
            self.refused = self.refused.saturating_add(1);
            if f64::from(self.refused) > self.burst {
                Verdict::Flood
            } else {
                Verdict::Refuse
            }
        }
    }
}

/// Token buckets per user, for requests that have no connection to hang a limiter on (HTTP) or
/// that must not multiply with a user's connections (history reads). Idle buckets are forgotten.
pub(crate) struct UserLimits {
    users: moka::sync::Cache<UserId, Arc<Mutex<RateLimiter>>>,
}

impl UserLimits {
    pub(crate) fn new() -> Self {
        Self {
            users: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        }
    }

    /// Whether `user` may make one more request under `rate` per second, bursts of `burst`.
    pub(crate) fn allow(&self, user: &UserId, rate: f64, burst: f64) -> bool {
        let limiter = self.users.get_with(user.clone(), || {
            Arc::new(Mutex::new(RateLimiter::new(rate, burst)))
        });
        let mut limiter = limiter.lock().unwrap_or_else(|p| p.into_inner());
        limiter.check(Instant::now()) == Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_burst_then_refuses_then_floods() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10.0, 5.0);
        for _ in 0..5 {
            assert_eq!(r.check(t0), Verdict::Allow);
        }
        for _ in 0..5 {
            assert_eq!(r.check(t0), Verdict::Refuse);
        }
        assert_eq!(r.check(t0), Verdict::Flood);
    }

    #[test]
    fn refills_over_time() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10.0, 1.0);
        assert_eq!(r.check(t0), Verdict::Allow);
        assert_eq!(r.check(t0), Verdict::Refuse);
        assert_eq!(r.check(t0 + Duration::from_millis(100)), Verdict::Allow);
    }

    /// Sends at `per_sec` frames per second for `secs` (simulated time); when the verdict first
    /// became Flood, in seconds.
    fn flood_after(per_sec: u32, secs: u32) -> Option<f64> {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(50.0, 100.0);
        let step = Duration::from_secs(1) / per_sec;
        (0..per_sec * secs).find_map(|i| {
            let now = t0 + step * i;
            (r.check(now) == Verdict::Flood).then(|| (step * i).as_secs_f64())
        })
    }

    #[test]
    fn sustained_excess_is_closed_and_compliance_never_is() {
        for rate in [200, 500, 2000] {
            let at = flood_after(rate, 10).unwrap_or(f64::INFINITY);
            assert!(at < 10.0, "{rate}/s flooded at {at}");
        }
        // Over by more than burst / 10 per second: closed within the window.
        assert!(flood_after(65, 20).is_some_and(|at| at < 20.0));
        // Within the rate, or over it by less than that, for a minute: never closed.
        assert_eq!(flood_after(50, 60), None);
        assert_eq!(flood_after(55, 60), None);
    }
}
