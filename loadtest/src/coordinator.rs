//! The coordinator: [`run`] walks a load test from setup to report.
//!
//! Phases: create the conversations; start the workers and let them connect (paced by
//! `--connect-rate`); sample the fabric's RSS with every connection idle and subscribed; walk the
//! rate schedule (with churn and the storm if asked); stop sending and drain; collect every
//! worker's final accounting; report. Every second it merges the workers' ticks into one point of
//! the timeline and samples CPU and RSS of the fabric's processes and of its own.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use crate::args::{LoadtestArgs, Settings};
use crate::control::{self, Command, Counters, Event, Final, Tick, WorkerLink, WorkerPlan};
use crate::ledger::{self, AckBook, ReceiptBook};
use crate::procstat::{self, ProcSample};
use crate::report::{self, Point, Report, RssReport, StepReport};
use crate::stats::{new_histogram, Latency};

/// Runs a load test (or, with `--worker`, serves as one of its worker processes).
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use clap::Parser;
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     args: chatfabric_loadtest::LoadtestArgs,
/// }
/// let cli = Cli::parse_from(["loadtest", "--scenario", "steady-100x10", "--html", "r.html"]);
/// chatfabric_loadtest::run(cli.args).await
/// # }
/// ```
pub async fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    if args.worker {
        return control::serve_worker().await;
    }
    let settings = Settings::resolve(&args)?;
    let mut notes = preflight(&settings);
    for note in &notes {
        eprintln!("note: {note}");
    }
    let progress = Progress::new();
    progress.say(format!(
        "creating {} conversations ({} active x {} members, {} quiet for {} idle connections)",
        settings.conversations + settings.idle_conversations(),
        settings.conversations,
        settings.members,
        settings.idle_conversations(),
        settings.idle,
    ));
    let convs = crate::setup::create_conversations(&settings)
        .await
        .context("creating the conversations (is the fabric running, and the secret right?)")?;
    let fabric = Fabric::new(&settings.fabric_pids);
    let rss_before = fabric.sample();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let links = control::spawn_workers(settings.workers, &ev_tx)?;
    drop(ev_tx);
    for (index, link) in links.iter().enumerate() {
        link.send(Command::Plan(Box::new(WorkerPlan {
            index,
            workers: links.len(),
            settings: settings.clone(),
            jwt_secret: args.jwt_secret.clone(),
            convs: convs.clone(),
            in_process: settings.workers == 0,
        })));
    }
    let mut c = Collector::new(links.len(), &settings, fabric);

    // Connect phase.
    let total = settings.total_conns() as u64;
    let connect_limit = Duration::from_secs_f64(total as f64 / settings.connect_rate * 2.0 + 30.0);
    let connect_start = Instant::now();
    c.mark("connect");
    c.pump(&mut events, &progress, connect_limit, |c| {
        c.reported() && c.settled() >= total
    })
    .await?;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    if c.settled() < total {
        notes.push(format!(
            "connect phase timed out after {connect_secs:.0} s with {} of {total} connections settled",
            c.settled()
        ));
    }
    // Let the gateways finish allocating for the new connections before reading their RSS.
    c.pump(&mut events, &progress, Duration::from_secs(2), |_| false)
        .await?;
    let rss = RssReport::new(&c.fabric, &rss_before, &c.fabric.sample(), c.subscribed());

    // Send phase.
    let window_start = c.cpu_snapshot();
    let delivered_before = c.totals.delivered;
    if settings.churn > 0.0 {
        broadcast(
            &links,
            &Command::Churn {
                per_sec: settings.churn,
            },
        );
    }
    let send_start = Instant::now();
    for (i, step) in settings.steps.iter().enumerate() {
        c.step = Some(i);
        c.mark(&format!("{:.0}/s", step.rate));
        broadcast(
            &links,
            &Command::Rate {
                rate: step.rate,
                step: i as u32,
            },
        );
        let step_end = send_start.elapsed().as_secs_f64() + step.secs;
        if let Some(at) = settings
            .storm_at
            .filter(|&at| at >= send_start.elapsed().as_secs_f64() && at < step_end)
        {
            let before = Duration::from_secs_f64(at - send_start.elapsed().as_secs_f64());
            c.pump(&mut events, &progress, before, |_| false).await?;
            c.mark("storm");
            broadcast(&links, &Command::Storm);
        }
        let left = (step_end - send_start.elapsed().as_secs_f64()).max(0.0);
        c.pump(
            &mut events,
            &progress,
            Duration::from_secs_f64(left),
            |_| false,
        )
        .await?;
    }
    broadcast(
        &links,
        &Command::Rate {
            rate: 0.0,
            step: settings.steps.len() as u32,
        },
    );
    broadcast(&links, &Command::Churn { per_sec: 0.0 });
    c.mark("drain");
    c.draining = true;
    c.pump(
        &mut events,
        &progress,
        Duration::from_secs_f64(settings.drain),
        |_| false,
    )
    .await?;
    let window_end = c.cpu_snapshot();
    let window_delivered = c.totals.delivered - delivered_before;

    // Finish.
    broadcast(&links, &Command::Finish);
    progress.say("closing connections and collecting the accounting".to_string());
    c.pump(&mut events, &progress, Duration::from_secs(60), |c| {
        c.finals.len() == c.workers
    })
    .await?;
    progress.finish();
    if c.finals.len() < c.workers {
        bail!(
            "only {} of {} workers sent their final report",
            c.finals.len(),
            c.workers
        );
    }
    let cpu = report::CpuReport::new(&window_start, &window_end, window_delivered);
    let report = c.into_report(settings, connect_secs, rss, cpu, notes);
    println!("{}", report::summary(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("JSON report: {}", path.display());
    }
    if let Some(path) = &args.html {
        std::fs::write(path, crate::html::render(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("HTML report: {}", path.display());
    }
    Ok(())
}

/// Raises this process's open-file limit to its hard limit; returns the soft limit in force.
pub(crate) fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            eprintln!("note: cannot raise the open-file limit: {err}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

/// Checks the settings against this machine and the gateway's defaults; returns notes.
fn preflight(s: &Settings) -> Vec<String> {
    let mut notes = Vec::new();
    let limit = raise_fd_limit();
    let per_process = if s.workers == 0 {
        s.total_conns()
    } else {
        s.total_conns().div_ceil(s.workers)
    };
    if per_process as u64 + 100 > limit {
        notes.push(format!(
            "{per_process} connections per process but the open-file limit is {limit}: \
             use more --workers or a smaller --conns-per-worker"
        ));
    }
    let sources = s.source_addrs.len().max(1);
    if s.total_conns() / sources > 28_000 {
        notes.push(format!(
            "{} connections from {sources} source address(es): each gives about 28,000 ports; \
             add --source-addr 127.0.0.N",
            s.total_conns()
        ));
    }
    let peak = s.steps.iter().map(|st| st.rate).fold(0.0, f64::max);
    // Every sender, WebSocket member or NATS publisher, sends at the same rate; only the
    // WebSocket ones are held to the gateway's per-connection limit.
    let senders = s.ws_senders() + s.nats_publishers;
    if s.ws_senders() > 0 && peak / senders as f64 > 45.0 {
        notes.push(format!(
            "{:.0} messages/s per sender exceeds what the gateway's default per-connection limit \
             (50 frames/s) lets through: add conversations, members or NATS publishers",
            peak / senders as f64
        ));
    }
    if s.nats_publishers > 0 {
        notes.push(format!(
            "{} NATS publishers send {:.1} % of the rate ({:.1} msg/s each at the peak step)",
            s.nats_publishers,
            s.nats_share() * 100.0,
            peak / senders as f64
        ));
    }
    notes
}

fn broadcast(links: &[WorkerLink], command: &Command) {
    for link in links {
        link.send(command.clone());
    }
}

/// The fabric's processes, as given by `--fabric-pid`.
pub(crate) struct Fabric {
    pub(crate) pids: Vec<u32>,
    pub(crate) labels: Vec<String>,
}

impl Fabric {
    fn new(pids: &[u32]) -> Fabric {
        Fabric {
            pids: pids.to_vec(),
            labels: pids.iter().map(|&p| procstat::describe(p)).collect(),
        }
    }

    /// One reading per pid (zero for a process that is gone).
    pub(crate) fn sample(&self) -> Vec<ProcSample> {
        self.pids
            .iter()
            .map(|p| procstat::sample(&p.to_string()).unwrap_or_default())
            .collect()
    }
}

/// CPU seconds at one moment: the fabric's, the load generator's, and the machine's.
#[derive(Debug, Clone)]
pub(crate) struct CpuSnapshot {
    pub(crate) at: Instant,
    pub(crate) fabric: Vec<ProcSample>,
    pub(crate) loadtest_secs: f64,
    pub(crate) machine: Option<(f64, f64)>,
}

/// Reports to stderr: an indicatif line on a terminal, plain lines every 5 s otherwise.
struct Progress {
    bar: indicatif::ProgressBar,
    last_plain: std::cell::Cell<Option<Instant>>,
}

impl Progress {
    fn new() -> Progress {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress {
            bar,
            last_plain: std::cell::Cell::new(None),
        }
    }

    fn say(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.set_message(line);
        }
    }

    fn update(&self, line: String) {
        if self.bar.is_hidden() {
            let due = self
                .last_plain
                .get()
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
            if due {
                self.last_plain.set(Some(Instant::now()));
                eprintln!("{line}");
            }
        } else {
            self.bar.set_message(line);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Counters and histograms of one rate step.
struct StepAcc {
    counters: Counters,
    e2e: Histogram<u64>,
    ack: Histogram<u64>,
}

/// What the coordinator has heard from its workers.
struct Collector {
    workers: usize,
    started: Instant,
    settings: Settings,
    fabric: Fabric,
    /// Each worker's last tick (None until its first).
    latest: Vec<Option<Tick>>,
    /// Since the last timeline point.
    point: Counters,
    point_e2e: Histogram<u64>,
    point_ack: Histogram<u64>,
    totals: Counters,
    e2e: Histogram<u64>,
    ack: Histogram<u64>,
    nats_ack: Histogram<u64>,
    connect: Histogram<u64>,
    steps: Vec<StepAcc>,
    step: Option<usize>,
    draining: bool,
    timeline: Vec<Point>,
    marks: Vec<(f64, String)>,
    finals: Vec<Final>,
    last_cpu: CpuSnapshot,
}

impl Collector {
    fn new(workers: usize, settings: &Settings, fabric: Fabric) -> Collector {
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

    fn mark(&mut self, label: &str) {
        self.marks.push((self.now(), label.to_string()));
    }

    fn reported(&self) -> bool {
        self.latest.iter().all(Option::is_some)
    }

    fn sum(&self, f: impl Fn(&Tick) -> u64) -> u64 {
        self.latest.iter().flatten().map(f).sum()
    }

    fn subscribed(&self) -> u64 {
        self.sum(|t| t.subscribed)
    }

    fn settled(&self) -> u64 {
        self.sum(|t| t.subscribed + t.given_up)
    }

    fn cpu_snapshot(&self) -> CpuSnapshot {
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
    async fn pump(
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

    fn into_report(
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
