//! A worker: holds its share of the connections and publishers (see `plan`), paces their sends,
//! and reports every second.
//!
//! Sends are paced by one timer per worker, not per connection: every `--pace-ms` (1 ms) it
//! hands out the messages due at the worker's share of the aggregate rate, round-robin over its
//! members, so the offered rate is exact whatever the number of connections. The step is short so
//! that what is due goes out a few at a time, as independent users' sends would, and not in
//! bursts that make every send of a burst wait for the fan-out of the ones before it. Its NATS
//! publishers take their turn in the same round-robin as the WebSocket senders.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connection;
use crate::control::{Command, Event, Tick};
use crate::ledger::ReceiptBook;
use crate::plan::{self, WorkerPlan};
use crate::shared::{Order, Shared, Target};

/// Queued orders per connection; beyond this the pacer counts a backlog instead of queueing.
const ORDER_QUEUE: usize = 16;
/// How long finishing connections get to close before the worker reports without them.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a worker: waits for its plan, then serves commands until `Finish`.
pub(crate) async fn run(mut commands: UnboundedReceiver<Command>, events: UnboundedSender<Event>) {
    let plan = match commands.recv().await {
        Some(Command::Plan(plan)) => plan,
        _ => return,
    };
    let index = plan.index;
    if let Err(err) = drive(*plan, commands, &events).await {
        crate::control::report_failure(&events, index, format!("{err:#}"));
    }
}

async fn drive(
    plan: WorkerPlan,
    mut commands: UnboundedReceiver<Command>,
    events: &UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let s = &plan.settings;
    crate::preflight::raise_fd_limit();
    let mut targets = Vec::new();
    for url in &s.gateways {
        targets.push(Target {
            url: url.clone(),
            addr: crate::setup::resolve(url).await?,
        });
    }
    let shared = Arc::new(Shared::new(
        targets,
        s.payload,
        plan.jwt_secret.clone(),
        3600 + (s.send_secs() + s.drain) as u64 * 4,
    ));
    let members = plan::worker_members(&plan);
    let assigned = members.len() as u64;
    let member_conns = s.member_conns();
    let workers = plan.workers.max(1) as f64;
    let finish = CancellationToken::new();
    let mut tasks = JoinSet::new();
    // Every connection's order queue, and the queues of the connections and publishers that send.
    let mut queues: Vec<mpsc::Sender<Order>> = Vec::with_capacity(members.len());
    let mut senders: Vec<mpsc::Sender<Order>> = Vec::new();
    // Publishers connect before the connections, so a wrong --nats-url fails the run at once.
    let mut publishers = JoinSet::new();
    let mine = plan::worker_publishers(&plan);
    let clients = futures::future::try_join_all(
        mine.iter()
            .map(|p| crate::publisher::connect(&s.nats_url, p)),
    )
    .await?;
    for (publisher, client) in mine.into_iter().zip(clients) {
        let (tx, rx) = mpsc::channel(ORDER_QUEUE);
        senders.push(tx);
        publishers.spawn(crate::publisher::run(
            publisher,
            shared.clone(),
            client,
            rx,
            finish.clone(),
        ));
    }
    let mut to_spawn = members.into_iter();
    // At least one connection a second; the first at once.
    let connect_rate = (s.connect_rate / workers).max(1.0);
    let mut connects = Credit(1.0);
    let (mut rate, mut churn) = (0.0f64, 0.0f64);
    let (mut sends, mut drops) = (Credit::default(), Credit::default());
    let mut next_sender = 0usize;
    let mut pace = tokio::time::interval(Duration::from_millis(s.pace_ms));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Ticks end on whole Unix seconds, in every worker, so the coordinator (which closes its
    // timeline points 300 ms later) puts each worker's second in the same point.
    let to_boundary = 1_000_000_000 - crate::frames::unix_nanos() % 1_000_000_000;
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_nanos(to_boundary),
        Duration::from_secs(1),
    );
    let mut last_pace = Instant::now();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Rate { rate: r, step }) => {
                    shared.step.store(step, Relaxed);
                    // This worker's share: its senders over all senders.
                    rate = r * plan::senders_share(&plan);
                }
                Some(Command::Churn { per_sec }) => churn = per_sec / workers,
                Some(Command::Storm) => {
                    for q in &queues {
                        if q.try_send(Order::Drop).is_err() {
                            shared.counters.send_backlog.fetch_add(1, Relaxed);
                        }
                    }
                }
                Some(Command::Plan(_)) => {}
                Some(Command::Finish) | None => break,
            },
            _ = pace.tick() => {
                let dt = last_pace.elapsed().as_secs_f64();
                last_pace = Instant::now();
                // Connect phase: open connections at the worker's share of the connect rate.
                for _ in 0..connects.due(connect_rate, dt) {
                    let Some(member) = to_spawn.next() else { break };
                    let (tx, rx) = mpsc::channel(ORDER_QUEUE);
                    if member.index < member_conns && !member.sse {
                        senders.push(tx.clone());
                    }
                    queues.push(tx);
                    tasks.spawn(connection::run(member, shared.clone(), rx, finish.clone()));
                }
                if !senders.is_empty() {
                    for _ in 0..sends.due(rate, dt) {
                        let q = &senders[next_sender % senders.len()];
                        next_sender += 1;
                        if q.try_send(Order::Send).is_err() {
                            shared.counters.send_backlog.fetch_add(1, Relaxed);
                        }
                    }
                }
                for _ in 0..drops.due(churn, dt) {
                    if queues.is_empty() {
                        break;
                    }
                    let q = &queues[fastrand::usize(0..queues.len())];
                    if q.try_send(Order::Drop).is_err() {
                        shared.counters.send_backlog.fetch_add(1, Relaxed);
                    }
                }
            },
            _ = report.tick() => {
                let tick = make_tick(&plan, &shared, assigned);
                if events.send(Event::Tick(Box::new(tick))).is_err() {
                    break; // the coordinator is gone
                }
            },
        }
    }
    finish.cancel();
    let mut receipts = ReceiptBook::default();
    let mut unacked = 0;
    let drained = tokio::time::timeout(FINISH_TIMEOUT, async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((conv, ledger, left)) => {
                    ledger.file(conv, &mut receipts);
                    unacked += left;
                }
                Err(err) => shared.note_error(&format!("connection task failed: {err}")),
            }
        }
    })
    .await;
    if drained.is_err() {
        shared.note_error(&format!(
            "{} connections did not close in time",
            tasks.len()
        ));
    }
    while let Some(joined) = publishers.join_next().await {
        match joined {
            Ok(left) => unacked += left,
            Err(err) => shared.note_error(&format!("publisher task failed: {err}")),
        }
    }
    // The last partial second.
    let tick = make_tick(&plan, &shared, assigned);
    events
        .send(Event::Tick(Box::new(tick)))
        .ok()
        .context("coordinator gone")?;
    let fin = shared.take_final(plan.index, receipts, unacked);
    events
        .send(Event::Final(Box::new(fin)))
        .ok()
        .context("coordinator gone")?;
    Ok(())
}

/// Work due at a rate, handed out in whole units as time passes (the fraction carries over).
#[derive(Debug, Default)]
struct Credit(f64);

impl Credit {
    /// Adds `per_sec` over `secs` and takes the whole units now due.
    fn due(&mut self, per_sec: f64, secs: f64) -> u64 {
        self.0 += per_sec * secs;
        let whole = self.0.floor().max(0.0);
        self.0 -= whole;
        whole as u64
    }
}

fn make_tick(plan: &WorkerPlan, shared: &Shared, assigned: u64) -> Tick {
    let [e2e, ack, nats_ack, connect] = shared.take_histograms();
    Tick {
        worker: plan.index,
        counters: shared.counters.take(),
        e2e,
        ack,
        nats_ack,
        connect,
        open: shared.open.load(Relaxed),
        subscribed: shared.subscribed.load(Relaxed),
        given_up: shared.given_up.load(Relaxed),
        assigned,
        cpu_secs: if plan.in_process {
            None
        } else {
            crate::procstat::sample("self").map(|p| p.cpu_secs)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_go_out_a_few_per_step_at_the_exact_rate() {
        // 2,000 msg/s for one second of the default 1 ms steps: two a step, not the twenty of a
        // 10 ms step, and none lost to rounding.
        let mut sends = Credit::default();
        let steps: Vec<u64> = (0..1000).map(|_| sends.due(2000.0, 0.001)).collect();
        assert!(steps.iter().all(|&n| n <= 2), "{steps:?}");
        assert!((1999..=2000).contains(&steps.iter().sum::<u64>()));
        // A late step (the generator was descheduled) hands out what fell due meanwhile.
        assert_eq!(sends.due(2000.0, 0.0105), 21);
    }
}
