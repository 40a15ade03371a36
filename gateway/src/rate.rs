//! Per-connection rate limiting: a token bucket over inbound frames.

use std::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
