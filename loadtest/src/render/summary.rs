//! The human summary printed at the end of a run (and shown at the top of the HTML report).

use std::fmt::Write as _;

use crate::plan::nats_share;
use crate::report::Report;
use crate::stats::Latency;

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "MET",
        Some(false) => "MISSED",
        None => "-",
    }
}

fn lat(l: &Latency) -> String {
    format!(
        "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  (n={})",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
    )
}

/// The human summary printed at the end of a run.
pub(crate) fn summary(r: &Report) -> String {
    let s = &r.settings;
    let mut o = String::new();
    let scenario = s
        .scenario
        .map(|sc| format!("{sc:?}"))
        .unwrap_or_else(|| "custom".into());
    let _ = writeln!(o, "\n== chatfabric loadtest: {scenario} ({}) ==", s.run_id);
    let _ = writeln!(
        o,
        "{} conversations x {} members + {} idle = {} connections over {} gateway(s), {}, payload {} B",
        s.conversations, s.members, s.idle, s.total_conns(), s.gateways.len(), if s.workers == 0 { "in-process worker".to_string() } else { format!("{} worker processes", s.workers) }, s.payload
    );
    let c = &r.connect;
    let _ = writeln!(
        o,
        "connect    {}/{} subscribed in {:.1} s ({:.0}/s), {} failed attempts, {} gave up; session setup {}",
        c.subscribed, c.connections, c.secs, c.per_s, c.failed_attempts, c.given_up, lat(&c.latency)
    );
    let t = &r.totals;
    let _ = writeln!(
        o,
        "traffic    sent {} acked {} (retried {}, dup acks {}, send errors {}, unacked {}), delivered {} = {:.0} deliveries/s",
        t.sent, t.acked, t.resent, t.ack_duplicates, t.send_errors, r.unacked, t.delivered, r.deliveries_per_s
    );
    let _ = writeln!(o, "e2e        {}", lat(&r.e2e));
    let _ = writeln!(o, "send->ack  {}", lat(&r.ack));
    if s.nats_publishers > 0 {
        let _ = writeln!(
            o,
            "nats       {} publishers on {}: sent {} ({:.1} % of the rate), acked {}; send->ack {}",
            s.nats_publishers,
            s.nats_url,
            t.nats_sent,
            nats_share(s) * 100.0,
            t.nats_acked,
            lat(&r.nats_ack)
        );
    }
    let a = &r.accounting;
    let _ = writeln!(
        o,
        "delivery   expected {} lost {} ({} receivers with loss of {}), duplicates {}, order violations {} => {}",
        a.expected_deliveries,
        a.lost,
        a.receivers_with_loss,
        a.receivers,
        a.duplicates,
        a.order_violations,
        if r.delivery_ok() { "OK" } else { "FAILED" }
    );
    let _ = writeln!(
        o,
        "closes     reconnects {}, slow consumer (4008) {}, going away (1001) {}, other {}; send backlog {}",
        t.reconnects, t.slow_consumer_closes, t.going_away_closes, t.other_closes, t.send_backlog
    );
    if r.steps.len() > 1 {
        let _ = writeln!(o, "\n  step msg/s | sent/s    deliv/s | e2e p50   p99   p99.9 ms | ack p99 ms | lost | held");
        for st in &r.steps {
            let _ =
                writeln!(
                o,
                "  {:>10.0} | {:>7.0} {:>10.0} | {:>7.2} {:>6.2} {:>7.2} | {:>10.2} | {:>4} | {}",
                st.rate,
                st.sent_per_s,
                st.delivered_per_s,
                st.e2e.p50_ms,
                st.e2e.p99_ms,
                st.e2e.p999_ms,
                st.ack.p99_ms,
                st.lost,
                if st.passes(s.p99_target_ms) { "yes" } else { "no" }
            );
        }
        match r.capacity() {
            Some(best) => {
                let _ = writeln!(
                    o,
                    "  capacity: {:.0} msg/s in = {:.0} deliveries/s with p99 < {} ms and zero loss",
                    best.rate, best.delivered_per_s, s.p99_target_ms
                );
            }
            None => {
                let _ = writeln!(o, "  capacity: no step held");
            }
        }
    }
    let cpu = &r.cpu;
    let _ = writeln!(
        o,
        "\ncpu        over {:.1} s and {} deliveries: fabric {} us/delivery, load generator {} us/delivery",
        cpu.window_secs,
        cpu.deliveries,
        cpu.fabric_us_per_delivery.map(|v| format!("{v:.2}")).unwrap_or("?".into()),
        cpu.loadtest_us_per_delivery.map(|v| format!("{v:.2}")).unwrap_or("?".into()),
    );
    if cpu.deliveries > 0 {
        for (label, secs) in r.fabric_processes.iter().zip(&cpu.process_secs) {
            let us = secs * 1e6 / cpu.deliveries as f64;
            let _ = writeln!(o, "             {label}: {us:.2} us/delivery");
        }
    }
    let _ = writeln!(o, "bottleneck {}", cpu.bottleneck);
    if let Some(rss) = &r.rss {
        let _ = writeln!(
            o,
            "rss        {:.0} B per connection ({} connections; valid against a freshly started fabric)",
            rss.bytes_per_connection, rss.connections
        );
        for (label, before, after) in &rss.processes {
            let _ = writeln!(
                o,
                "             {label}: {:.1} -> {:.1} MiB",
                *before as f64 / 1048576.0,
                *after as f64 / 1048576.0
            );
        }
    }
    let _ = writeln!(o, "\ntargets");
    for check in crate::targets::check(r) {
        let _ = writeln!(
            o,
            "  {:<7} {:<60} {}",
            verdict(check.met),
            check.target,
            check.measured
        );
    }
    if !r.outages.is_empty() {
        let _ = writeln!(
            o,
            "\noutages    {} (unserved connections: broken sessions, sends unacked for over 1 s); failovers {}, stalls {}, unavailable {}",
            r.outages.len(),
            r.totals.failovers,
            r.totals.stalls,
            r.totals.unavailable
        );
        for out in r.outages.iter().take(20) {
            let _ = writeln!(
                o,
                "  at {} ms: {:.1} s, {} connections, longest {:.1} s",
                out.start_unix_ms,
                out.ms as f64 / 1000.0,
                out.connections,
                out.longest_ms as f64 / 1000.0
            );
        }
    }
    if !r.errors.is_empty() {
        let _ = writeln!(o, "\nerrors");
        for (e, n) in r.errors.iter().take(10) {
            let _ = writeln!(o, "  {n:>8} x {e}");
        }
    }
    for note in &r.notes {
        let _ = writeln!(o, "note: {note}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_capacity() {
        let r = crate::report::tests::sample_report();
        let text = summary(&r);
        assert!(text.contains("capacity: 1000 msg/s"), "{text}");
    }
}
