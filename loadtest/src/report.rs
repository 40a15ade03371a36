//! The report: what a run measured and the verdicts against the performance targets. The same
//! [`Report`] is written as JSON, and `render` turns it into the text summary and the HTML page.

use serde::{Deserialize, Serialize};

use crate::control::Counters;
use crate::ledger::Accounting;
use crate::procstat::{CpuSnapshot, Fabric, ProcSample};
use crate::settings::Settings;
use crate::stats::Latency;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) settings: Settings,
    pub(crate) connect: ConnectReport,
    /// End-to-end latency over the whole run.
    pub(crate) e2e: Latency,
    /// Send -> ack latency over the whole run (WebSocket and NATS).
    pub(crate) ack: Latency,
    /// Of those, the NATS publishers' (request -> reply).
    #[serde(default)]
    pub(crate) nats_ack: Latency,
    /// New deliveries per second of sending.
    pub(crate) deliveries_per_s: f64,
    pub(crate) totals: Counters,
    pub(crate) unacked: u64,
    pub(crate) accounting: Accounting,
    pub(crate) steps: Vec<StepReport>,
    pub(crate) rss: Option<RssReport>,
    pub(crate) cpu: CpuReport,
    pub(crate) timeline: Vec<Point>,
    /// `(seconds, label)`: phase changes, for the plots.
    pub(crate) marks: Vec<(f64, String)>,
    /// Times in which connections went unserved (one per fault in a chaos run).
    #[serde(default)]
    pub(crate) outages: Vec<crate::outage::Outage>,
    pub(crate) errors: Vec<(String, u64)>,
    pub(crate) notes: Vec<String>,
    pub(crate) fabric_processes: Vec<String>,
}

/// The connect phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConnectReport {
    pub(crate) connections: u64,
    pub(crate) subscribed: u64,
    pub(crate) given_up: u64,
    pub(crate) failed_attempts: u64,
    pub(crate) secs: f64,
    pub(crate) per_s: f64,
    /// Connect + upgrade + ready + subscribed.
    pub(crate) latency: Latency,
}

/// One rate step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepReport {
    pub(crate) rate: f64,
    pub(crate) secs: f64,
    pub(crate) sent: u64,
    pub(crate) sent_per_s: f64,
    pub(crate) delivered_per_s: f64,
    pub(crate) e2e: Latency,
    pub(crate) ack: Latency,
    /// Deliveries of messages sent in this step that never arrived.
    pub(crate) lost: u64,
    /// `msg` frames received in this step whose `prev` broke the chain.
    #[serde(default)]
    pub(crate) order_violations: u64,
}

impl StepReport {
    /// The step held: the generator kept its schedule, p99 under `p99_ms`, nothing lost,
    /// nothing out of order.
    pub(crate) fn passes(&self, p99_ms: f64) -> bool {
        self.sent_per_s >= self.rate * 0.95
            && self.e2e.p99_ms < p99_ms
            && self.lost == 0
            && self.order_violations == 0
    }
}

/// Resident memory of the fabric with every connection idle and subscribed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RssReport {
    /// `(process, rss before connecting, rss after)`, bytes.
    pub(crate) processes: Vec<(String, u64, u64)>,
    pub(crate) connections: u64,
    /// Growth of all fabric processes together, per connection.
    pub(crate) bytes_per_connection: f64,
}

impl RssReport {
    pub(crate) fn new(
        fabric: &Fabric,
        before: &[ProcSample],
        after: &[ProcSample],
        connections: u64,
    ) -> Option<RssReport> {
        if fabric.pids.is_empty() || connections == 0 {
            return None;
        }
        let processes: Vec<(String, u64, u64)> = fabric
            .labels
            .iter()
            .zip(before.iter().zip(after))
            .map(|(l, (b, a))| (l.clone(), b.rss_bytes, a.rss_bytes))
            .collect();
        let growth: i64 = processes
            .iter()
            .map(|(_, b, a)| *a as i64 - *b as i64)
            .sum();
        Some(RssReport {
            processes,
            connections,
            bytes_per_connection: growth as f64 / connections as f64,
        })
    }
}

/// CPU over the send window (first step to the end of the drain).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CpuReport {
    pub(crate) window_secs: f64,
    pub(crate) deliveries: u64,
    /// CPU seconds of the `--fabric-pid` processes (None without any).
    pub(crate) fabric_secs: Option<f64>,
    pub(crate) fabric_us_per_delivery: Option<f64>,
    /// Of `fabric_secs`, each `--fabric-pid` process's, in their order.
    #[serde(default)]
    pub(crate) process_secs: Vec<f64>,
    pub(crate) loadtest_secs: f64,
    pub(crate) loadtest_us_per_delivery: Option<f64>,
    /// Share of the machine's CPU that was busy (all processes).
    pub(crate) machine_busy: Option<f64>,
    pub(crate) cores: usize,
    /// Who limited the run, in words.
    pub(crate) bottleneck: String,
}

impl CpuReport {
    pub(crate) fn new(start: &CpuSnapshot, end: &CpuSnapshot, deliveries: u64) -> CpuReport {
        let window_secs = end.at.duration_since(start.at).as_secs_f64();
        let sum = |s: &CpuSnapshot| s.fabric.iter().map(|p| p.cpu_secs).sum::<f64>();
        let fabric_secs = (!start.fabric.is_empty()).then(|| sum(end) - sum(start));
        let per = |secs: f64| (deliveries > 0).then(|| secs * 1e6 / deliveries as f64);
        let loadtest_secs = end.loadtest_secs - start.loadtest_secs;
        let machine_busy = match (start.machine, end.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0) / (t1 - t0)),
            _ => None,
        };
        // The machine's, not this process's: the load generator may be pinned to one CPU.
        let cores = crate::procstat::machine_cores()
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1);
        let mut cpu = CpuReport {
            window_secs,
            deliveries,
            fabric_secs,
            fabric_us_per_delivery: fabric_secs.and_then(per),
            process_secs: start
                .fabric
                .iter()
                .zip(&end.fabric)
                .map(|(a, b)| b.cpu_secs - a.cpu_secs)
                .collect(),
            loadtest_secs,
            loadtest_us_per_delivery: per(loadtest_secs),
            machine_busy,
            cores,
            bottleneck: String::new(),
        };
        cpu.bottleneck = cpu.judge();
        cpu
    }

    /// Says whether the load generator, the fabric, or nothing limited the run.
    fn judge(&self) -> String {
        let w = self.window_secs.max(1e-9);
        let lt = self.loadtest_secs / w;
        let Some(busy) = self.machine_busy else {
            return format!("load generator used {lt:.2} cores (machine load unknown)");
        };
        let fabric = self
            .fabric_secs
            .map(|f| format!("{:.2}", f / w))
            .unwrap_or("?".into());
        let base = format!(
            "machine {:.0}% busy over {} cores; load generator {lt:.2} cores, fabric {fabric} cores",
            busy * 100.0,
            self.cores
        );
        if busy < 0.85 {
            return format!("{base}: CPU had headroom (neither side was CPU-bound)");
        }
        let fabric_cores = self.fabric_secs.map(|f| f / w).unwrap_or(0.0);
        let others = busy * self.cores as f64 - lt - fabric_cores;
        if others > 0.25 * self.cores as f64 {
            return format!(
                "{base}: OTHER PROCESSES used {others:.2} cores; latency and throughput figures \
                 are disturbed (CPU per delivery is per process and still holds)"
            );
        }
        if lt >= fabric_cores {
            format!("{base}: the LOAD GENERATOR is the bottleneck; figures are a lower bound")
        } else {
            format!("{base}: the fabric saturated the CPU")
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Point {
    pub(crate) t: f64,
    pub(crate) open: u64,
    pub(crate) connects_per_s: f64,
    pub(crate) connect_failures: u64,
    pub(crate) sent_per_s: f64,
    pub(crate) acked_per_s: f64,
    pub(crate) delivered_per_s: f64,
    pub(crate) e2e: Latency,
    pub(crate) ack: Latency,
    pub(crate) loadtest_cores: f64,
    pub(crate) fabric_cores: f64,
    pub(crate) fabric_rss_bytes: u64,
}

impl Report {
    /// The highest step that held (ramp capacity), if any.
    pub(crate) fn capacity(&self) -> Option<&StepReport> {
        let p99 = self.settings.p99_target_ms;
        self.steps
            .iter()
            .filter(|s| s.passes(p99))
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
    }

    /// Zero loss, duplicates and order violations, and every connection subscribed.
    pub(crate) fn delivery_ok(&self) -> bool {
        let a = &self.accounting;
        a.lost == 0 && a.duplicates == 0 && a.order_violations == 0 && self.connect.given_up == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::settings::Step;

    /// A report as a two-step ramp with a storm would produce it.
    pub(crate) fn sample_report() -> Report {
        let settings = Settings {
            scenario: Some(crate::args::Scenario::Ramp),
            steps: vec![
                Step {
                    rate: 1000.0,
                    secs: 10.0,
                },
                Step {
                    rate: 12000.0,
                    secs: 10.0,
                },
            ],
            storm_at: Some(5.0),
            connect_rate: 1000.0,
            fabric_pids: vec![1],
            ..crate::settings::tests::resolve(&["--run-id", "t"]).unwrap()
        };
        let lat = |p99| Latency {
            count: 10,
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: p99,
            p999_ms: p99,
            max_ms: p99,
            mean_ms: 1.0,
        };
        let steps = vec![
            StepReport {
                rate: 1000.0,
                secs: 10.0,
                sent: 10_000,
                sent_per_s: 1000.0,
                delivered_per_s: 10_000.0,
                e2e: lat(3.0),
                ack: lat(1.0),
                lost: 0,
                order_violations: 0,
            },
            StepReport {
                rate: 12000.0,
                secs: 10.0,
                sent: 120_000,
                sent_per_s: 11_900.0,
                delivered_per_s: 119_000.0,
                e2e: lat(80.0),
                ack: lat(4.0),
                lost: 0,
                order_violations: 0,
            },
        ];
        let timeline = (0..30)
            .map(|i| Point {
                t: i as f64,
                open: 100,
                sent_per_s: if i < 20 {
                    1000.0 + 500.0 * i as f64
                } else {
                    0.0
                },
                delivered_per_s: if i < 20 {
                    10_000.0 + 5_000.0 * i as f64
                } else {
                    0.0
                },
                e2e: lat(1.0 + i as f64),
                ..Point::default()
            })
            .collect();
        Report {
            settings,
            connect: ConnectReport {
                connections: 100,
                subscribed: 100,
                given_up: 0,
                failed_attempts: 0,
                secs: 1.0,
                per_s: 100.0,
                latency: lat(2.0),
            },
            e2e: lat(60.0),
            ack: lat(3.0),
            nats_ack: Latency::default(),
            deliveries_per_s: 64_500.0,
            totals: Counters {
                sent: 130_000,
                delivered: 1_290_000,
                ..Counters::default()
            },
            unacked: 0,
            accounting: Accounting::default(),
            steps,
            rss: None,
            cpu: CpuReport {
                window_secs: 25.0,
                deliveries: 1_290_000,
                fabric_secs: Some(6.45),
                fabric_us_per_delivery: Some(5.0),
                ..CpuReport::default()
            },
            timeline,
            marks: vec![(0.0, "connect".into()), (5.0, "storm".into())],
            outages: vec![],
            errors: vec![],
            notes: vec![],
            fabric_processes: vec!["chatfabric dev [1]".into()],
        }
    }

    #[test]
    fn a_lossy_step_does_not_hold() {
        let mut r = sample_report();
        r.steps[0].lost = 1;
        assert!(r.capacity().is_none());
        r.accounting.lost = 1;
        assert!(!r.delivery_ok());
    }

    #[test]
    fn the_bottleneck_is_named() {
        let mut cpu = CpuReport {
            window_secs: 10.0,
            loadtest_secs: 12.0,
            fabric_secs: Some(6.0),
            machine_busy: Some(0.95),
            cores: 2,
            ..CpuReport::default()
        };
        assert!(cpu.judge().contains("LOAD GENERATOR"), "{}", cpu.judge());
        cpu.loadtest_secs = 2.0;
        cpu.fabric_secs = Some(4.0);
        assert!(cpu.judge().contains("OTHER PROCESSES"), "{}", cpu.judge());
        cpu.fabric_secs = Some(17.0);
        assert!(cpu.judge().contains("fabric saturated"));
        cpu.machine_busy = Some(0.5);
        assert!(cpu.judge().contains("headroom"));
    }
}
