//! Rate limiting: a token bucket over inbound frames, per connection or per user.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatfabric_nats::UserId;

/// A token bucket: `rate` frames per second on average, bursts up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Consecutive refusals; reset by the next accepted frame.
    refused: u32,
}

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
            refused: 0,
        }
    }

    /// Takes one token at `now`. After `burst` consecutive refusals the verdict is [`Verdict::Flood`].
    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            Verdict::Allow
        } else {
            self.refused += 1;
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
}
