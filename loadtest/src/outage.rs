//! Outages as a user sees them: the time a connection was not served.
//!
//! A connection is unserved from the moment its session broke, a send of it was answered
//! `unavailable`, or a send waited longer than [`SLOW_ACK`] for its ack (then from when that send
//! was written), until it is subscribed again with every send acknowledged. Each connection's
//! intervals are merged over all connections into [`Outage`]s: one per fault, as a chaos run
//! injects them one at a time.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::frames::unix_nanos;

/// A send unacknowledged for longer than this counts as an outage of its connection.
pub(crate) const SLOW_ACK: Duration = Duration::from_secs(1);

/// One connection's current outage, if any.
#[derive(Debug, Default)]
pub(crate) struct OutageClock {
    since: Option<(Instant, u64)>,
}

impl OutageClock {
    /// The connection is unserved since `at` (kept if an outage is already running).
    pub(crate) fn begin(&mut self, at: Instant) {
        let ago = at.elapsed().as_millis() as u64;
        self.since
            .get_or_insert((at, (unix_nanos() / 1_000_000).saturating_sub(ago)));
    }

    /// Whether an outage is running.
    pub(crate) fn running(&self) -> bool {
        self.since.is_some()
    }

    /// The connection is served again: returns the outage as `(start unix ms, duration ms)`.
    pub(crate) fn end(&mut self) -> Option<(u64, u64)> {
        let (at, start) = self.since.take()?;
        Some((start, at.elapsed().as_millis() as u64))
    }
}

/// A time in which at least one connection was unserved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Outage {
    /// When the first connection became unserved, Unix milliseconds.
    pub(crate) start_unix_ms: u64,
    /// Until the last of them was served again, milliseconds.
    pub(crate) ms: u64,
    /// Connection outages inside it.
    pub(crate) connections: u64,
    /// The longest of them, milliseconds.
    pub(crate) longest_ms: u64,
}

/// Merges overlapping connection outages `(start unix ms, duration ms)` into [`Outage`]s.
pub(crate) fn merge(mut spans: Vec<(u64, u64)>) -> Vec<Outage> {
    spans.sort_unstable();
    let mut out: Vec<Outage> = Vec::new();
    for (start, ms) in spans {
        match out.last_mut() {
            Some(o) if start <= o.start_unix_ms + o.ms => {
                o.ms = o.ms.max(start + ms - o.start_unix_ms);
                o.connections += 1;
                o.longest_ms = o.longest_ms.max(ms);
            }
            _ => out.push(Outage {
                start_unix_ms: start,
                ms,
                connections: 1,
                longest_ms: ms,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_spans_merge_and_separate_ones_do_not() {
        let merged = merge(vec![(1000, 500), (1200, 1000), (5000, 100)]);
        assert_eq!(
            merged,
            vec![
                Outage {
                    start_unix_ms: 1000,
                    ms: 1200,
                    connections: 2,
                    longest_ms: 1000
                },
                Outage {
                    start_unix_ms: 5000,
                    ms: 100,
                    connections: 1,
                    longest_ms: 100
                },
            ]
        );
    }
}
