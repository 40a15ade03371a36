//! The project's performance targets, and what a run's [`Report`] says about each.

use serde::{Deserialize, Serialize};

use crate::report::Report;

// Issue 12's targets, on one pinned core (see BENCHMARKS.md).
const TARGET_US_PER_DELIVERY: f64 = 15.0;
const TARGET_DELIVERIES_PER_S: f64 = 80_000.0;
const TARGET_RSS_PER_CONN: f64 = 4096.0;
const TARGET_ACK_P99_MS: f64 = 5.0;
const TARGET_ACK_RATE: f64 = 2_000.0;
/// Below this delivery rate, CPU per delivery mostly measures idle work (timers, heartbeats).
const MIN_DELIVERIES_PER_S: f64 = 1_000.0;

/// One target and what this run says about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TargetCheck {
    pub(crate) target: String,
    pub(crate) measured: String,
    /// None: this run does not measure it.
    pub(crate) met: Option<bool>,
}

/// The run against the project's performance targets.
pub(crate) fn check(r: &Report) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let busy_enough = r.cpu.deliveries as f64 / r.cpu.window_secs.max(1e-9) >= MIN_DELIVERIES_PER_S;
    out.push(TargetCheck {
        target: format!("<= {TARGET_US_PER_DELIVERY} us server CPU per delivery"),
        measured: match (r.cpu.fabric_us_per_delivery, busy_enough) {
            (Some(us), true) => format!("{us:.2} us"),
            (Some(us), false) => format!(
                "{us:.2} us, but under {MIN_DELIVERIES_PER_S:.0} deliveries/s idle costs dominate"
            ),
            (None, _) => "not measured (give --fabric-pid and send messages)".into(),
        },
        met: r
            .cpu
            .fabric_us_per_delivery
            .filter(|_| busy_enough)
            .map(|us| us <= TARGET_US_PER_DELIVERY),
    });
    let best = r.capacity();
    out.push(TargetCheck {
        target: format!(
            ">= {TARGET_DELIVERIES_PER_S:.0} deliveries/s at p99 < {} ms, zero loss",
            r.settings.p99_target_ms
        ),
        measured: match best {
            Some(s) => format!(
                "{:.0} deliveries/s (step {:.0} msg/s, p99 {:.1} ms)",
                s.delivered_per_s, s.rate, s.e2e.p99_ms
            ),
            None => "no step held".into(),
        },
        met: best.map(|s| s.delivered_per_s >= TARGET_DELIVERIES_PER_S),
    });
    out.push(TargetCheck {
        target: format!(
            "<= {} KiB RSS per idle subscribed connection",
            TARGET_RSS_PER_CONN / 1024.0
        ),
        measured: match &r.rss {
            Some(r) => format!(
                "{:.0} B over {} connections",
                r.bytes_per_connection, r.connections
            ),
            None => "not measured (give --fabric-pid)".into(),
        },
        met: r
            .rss
            .as_ref()
            .map(|r| r.bytes_per_connection <= TARGET_RSS_PER_CONN),
    });
    let at_rate = r
        .steps
        .iter()
        .filter(|s| s.sent_per_s >= TARGET_ACK_RATE * 0.95)
        .min_by(|a, b| a.rate.total_cmp(&b.rate));
    out.push(TargetCheck {
        target: format!("send->ack p99 <= {TARGET_ACK_P99_MS} ms at {TARGET_ACK_RATE:.0} msg/s in"),
        measured: match at_rate {
            Some(s) => format!("{:.2} ms at {:.0} msg/s", s.ack.p99_ms, s.sent_per_s),
            None => {
                let top = r.steps.iter().map(|s| s.sent_per_s).fold(0.0, f64::max);
                format!(
                    "not reached (highest rate {top:.0} msg/s; ack p99 {:.2} ms)",
                    r.ack.p99_ms
                )
            }
        },
        met: at_rate.map(|s| s.ack.p99_ms <= TARGET_ACK_P99_MS),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_the_highest_step_that_held_and_targets_follow() {
        let r = crate::report::tests::sample_report();
        assert_eq!(
            r.capacity().map(|s| s.rate),
            Some(1000.0),
            "12k missed p99 < 50 ms"
        );
        let t = check(&r);
        assert_eq!(t[0].met, Some(true), "5.0 us is within 15 us");
        assert_eq!(t[1].met, Some(false), "10k deliveries/s is short of 80k");
        assert_eq!(t[2].met, None, "no RSS without --fabric-pid sampling");
        assert_eq!(
            t[3].met,
            Some(true),
            "ack p99 4 ms at the first step past 2k msg/s"
        );
        // An idle run's CPU per delivery is mostly idle work: no verdict.
        let mut idle = crate::report::tests::sample_report();
        idle.cpu.deliveries = 100;
        assert_eq!(check(&idle)[0].met, None);
    }
}
