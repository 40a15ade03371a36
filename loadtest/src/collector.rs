//! What the coordinator has heard from its workers: their ticks merged into the run's totals, its
//! rate steps and a timeline point per second (with CPU and RSS of the fabric's processes and of
//! the load generator), and, at the end, their final accounting merged into the [`Report`].

use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::control::{Counters, Event, Final, Tick};
use crate::ledger::{self, AckBook, ReceiptBook};
use crate::procstat::{self, CpuSnapshot, Fabric};
use crate::progress::Progress;
use crate::report::{self, Point, Report, RssReport, StepReport};
use crate::settings::Settings;
use crate::stats::{new_histogram, Latency};

/// Counters and histograms of one rate step.
struct StepAcc {
    counters: Counters,
    e2e: Histogram<u64>,
    ack: Histogram<u64>,
}

/// What the coordinator has heard from its workers.
pub(crate) struct Collector {
    pub(crate) workers: usize,
    started: Instant,
    settings: Settings,
    pub(crate) fabric: Fabric,
    /// Each worker's last tick (None until its first).
    latest: Vec<Option<Tick>>,
    /// Since the last timeline point.
    point: Counters,
    point_e2e: Histogram<u64>,
    point_ack: Histogram<u64>,
    pub(crate) totals: Counters,
    e2e: Histogram<u64>,
    ack: Histogram<u64>,
    nats_ack: Histogram<u64>,
    connect: Histogram<u64>,
    steps: Vec<StepAcc>,
    pub(crate) step: Option<usize>,
    pub(crate) draining: bool,
    timeline: Vec<Point>,
    marks: Vec<(f64, String)>,
    pub(crate) finals: Vec<Final>,
    last_cpu: CpuSnapshot,
}

impl Collector {
    /// Nothing heard yet from `workers` workers.
    pub(crate) fn new(workers: usize, settings: &Settings, fabric: Fabric) -> Collector {
        let steps = settings
            .steps
            .iter()
            .map(|_| StepAcc {
                counters: Counters::default(),
                e2e: new_histogram(),
                ack: new_histogram(),
            })
            .collect();
        let mut c = Collector {
            workers,
            started: Instant::now(),
            settings: settings.clone(),
            fabric,
            latest: vec![None; workers],
            point: Counters::default(),
            point_e2e: new_histogram(),
            point_ack: new_histogram(),
            totals: Counters::default(),
            e2e: new_histogram(),
            ack: new_histogram(),
            nats_ack: new_histogram(),
            connect: new_histogram(),
            steps,
            step: None,
            draining: false,
            timeline: Vec::new(),
            marks: Vec::new(),
            finals: Vec::new(),
            last_cpu: CpuSnapshot {
                at: Instant::now(),
                fabric: vec![],
                loadtest_secs: 0.0,
                machine: None,
            },
        };
        c.last_cpu = c.cpu_snapshot();
        c
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Marks a phase change on the timeline.
    pub(crate) fn mark(&mut self, label: &str) {
        self.marks.push((self.now(), label.to_string()));
    }

    /// Every worker has sent a tick.
    pub(crate) fn reported(&self) -> bool {
        self.latest.iter().all(Option::is_some)
    }

    fn sum(&self, f: impl Fn(&Tick) -> u64) -> u64 {
        self.latest.iter().flatten().map(f).sum()
    }

    /// Connections that have subscribed at least once.
    pub(crate) fn subscribed(&self) -> u64 {
        self.sum(|t| t.subscribed)
    }

    /// Connections that subscribed or gave up.
    pub(crate) fn settled(&self) -> u64 {
        self.sum(|t| t.subscribed + t.given_up)
    }

    /// CPU seconds now, of the fabric and of the load generator (with its workers).
    pub(crate) fn cpu_snapshot(&self) -> CpuSnapshot {
        let own = procstat::sample("self").map(|p| p.cpu_secs).unwrap_or(0.0);
        let workers: f64 = self
            .latest
            .iter()
            .flatten()
            .filter_map(|t| t.cpu_secs)
            .sum();
        CpuSnapshot {
            at: Instant::now(),
            fabric: self.fabric.sample(),
            loadtest_secs: own + workers,
            machine: procstat::machine_cpu(),
        }
    }

    fn on_event(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Tick(tick) => {
                let tick = *tick;
                self.point.add(&tick.counters);
                self.totals.add(&tick.counters);
                tick.e2e.add_to(&mut self.point_e2e);
                tick.e2e.add_to(&mut self.e2e);
                tick.ack.add_to(&mut self.point_ack);
                tick.ack.add_to(&mut self.ack);
                tick.nats_ack.add_to(&mut self.nats_ack);
                tick.connect.add_to(&mut self.connect);
                if let Some(step) = self.step.and_then(|i| self.steps.get_mut(i)) {
                    step.counters.add(&tick.counters);
                    tick.e2e.add_to(&mut step.e2e);
                    tick.ack.add_to(&mut step.ack);
                }
                let w = tick.worker;
                if let Some(slot) = self.latest.get_mut(w) {
                    *slot = Some(tick);
                }
            }
            Event::Final(fin) => self.finals.push(*fin),
            Event::Failed { worker, message } => bail!("worker {worker} failed: {message}"),
        }
        Ok(())
    }

    /// Closes one timeline point.
    fn close_point(&mut self) {
        let cpu = self.cpu_snapshot();
        let dt = cpu
            .at
            .duration_since(self.last_cpu.at)
            .as_secs_f64()
            .max(1e-3);
        let fabric_cpu: f64 = cpu.fabric.iter().map(|p| p.cpu_secs).sum::<f64>()
            - self.last_cpu.fabric.iter().map(|p| p.cpu_secs).sum::<f64>();
        let counters = std::mem::take(&mut self.point);
        let per_s = |n: u64| n as f64 / dt;
        self.timeline.push(Point {
            t: self.now(),
            open: self.sum(|t| t.open),
            connects_per_s: per_s(counters.connects),
            connect_failures: counters.connect_failures,
            sent_per_s: per_s(counters.sent),
            acked_per_s: per_s(counters.acked),
            delivered_per_s: per_s(counters.delivered),
            e2e: Latency::of(&self.point_e2e),
            ack: Latency::of(&self.point_ack),
            loadtest_cores: ((cpu.loadtest_secs - self.last_cpu.loadtest_secs) / dt).max(0.0),
            fabric_cores: (fabric_cpu / dt).max(0.0),
            fabric_rss_bytes: cpu.fabric.iter().map(|p| p.rss_bytes).sum(),
        });
        self.point_e2e.reset();
        self.point_ack.reset();
        self.last_cpu = cpu;
    }

    fn progress_line(&self) -> String {
        let p = self.timeline.last().cloned().unwrap_or_default();
        let phase = match (self.step, self.draining) {
            (_, true) => "drain".to_string(),
            (Some(i), _) => format!(
                "step {}/{} {:.0}/s",
                i + 1,
                self.steps.len(),
                self.settings.steps[i].rate
            ),
            (None, _) => format!(
                "connecting {}/{}",
                self.settled(),
                self.settings.total_conns()
            ),
        };
        format!(
            "{:>5.0}s {phase} | open {} | sent {:.0}/s deliv {:.0}/s | e2e p99 {:.1} ms | ack p99 {:.1} ms | dup {} order {} | conn fail {}",
            self.now(),
            p.open,
            p.sent_per_s,
            p.delivered_per_s,
            p.e2e.p99_ms,
            p.ack.p99_ms,
            self.totals.duplicates,
            self.totals.order_violations,
            self.totals.connect_failures,
        )
    }

    /// Handles events for `limit` or until `done`, closing a timeline point every second.
    pub(crate) async fn pump(
        &mut self,
        events: &mut UnboundedReceiver<Event>,
        progress: &Progress,
        limit: Duration,
        done: impl Fn(&Collector) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        // Points close 300 ms after each whole Unix second, when the workers' ticks for that
        // second (see the worker) have arrived.
        let phase = (1_300_000_000 - crate::frames::unix_nanos() % 1_000_000_000) % 1_000_000_000;
        let mut second = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_nanos(phase),
            Duration::from_secs(1),
        );
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !done(self) {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_event(event)?,
                    None => bail!("every worker is gone"),
                },
                _ = second.tick() => {
                    self.close_point();
                    progress.update(self.progress_line());
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Ok(())
    }

    /// Merges the workers' final accounting into the report.
    pub(crate) fn into_report(
        mut self,
        settings: Settings,
        connect_secs: f64,
        rss: Option<RssReport>,
        cpu: report::CpuReport,
        mut notes: Vec<String>,
    ) -> Report {
        let mut acks = AckBook::default();
        let mut receipts = ReceiptBook::default();
        let mut unacked = 0;
        let mut errors = std::collections::BTreeMap::<String, u64>::new();
        let mut outages = Vec::new();
        for fin in std::mem::take(&mut self.finals) {
            outages.extend(fin.outages);
            acks.acks.extend(fin.acks.acks);
            receipts.merge(fin.receipts);
            unacked += fin.unacked;
            for (e, n) in fin.errors {
                *errors.entry(e).or_default() += n;
            }
        }
        let accounting = ledger::account(&acks, &receipts, settings.steps.len());
        let steps = self
            .steps
            .iter()
            .zip(&settings.steps)
            .enumerate()
            .map(|(i, (acc, step))| StepReport {
                rate: step.rate,
                secs: step.secs,
                sent: acc.counters.sent,
                sent_per_s: acc.counters.sent as f64 / step.secs.max(1e-9),
                delivered_per_s: acc.counters.delivered as f64 / step.secs.max(1e-9),
                e2e: Latency::of(&acc.e2e),
                ack: Latency::of(&acc.ack),
                lost: accounting.lost_per_step.get(i).copied().unwrap_or(0),
                order_violations: acc.counters.order_violations,
            })
            .collect();
        if unacked > 0 {
            notes.push(format!(
                "{unacked} sends were still waiting for their ack at the end"
            ));
        }
        let subscribed = self.subscribed();
        let given_up = self.sum(|t| t.given_up);
        Report {
            connect: report::ConnectReport {
                connections: settings.total_conns() as u64,
                subscribed,
                given_up,
                failed_attempts: self.totals.connect_failures,
                secs: connect_secs,
                per_s: subscribed as f64 / connect_secs.max(1e-9),
                latency: Latency::of(&self.connect),
            },
            e2e: Latency::of(&self.e2e),
            ack: Latency::of(&self.ack),
            nats_ack: Latency::of(&self.nats_ack),
            deliveries_per_s: self.totals.delivered as f64 / settings.send_secs().max(1e-9),
            totals: self.totals,
            unacked,
            accounting,
            steps,
            rss,
            cpu,
            timeline: self.timeline,
            marks: self.marks,
            outages: crate::outage::merge(outages),
            errors: errors.into_iter().collect(),
            notes,
            fabric_processes: self.fabric.labels.clone(),
            settings,
        }
    }
}
