//! A worker: holds its share of the connections, paces their sends, and reports every second.
//!
//! Connection `i` of the run (members of active conversations first, then idle connections)
//! belongs to worker `i % workers`, goes to gateway `i % gateways` and connects from source
//! address `i % sources`, so every worker, gateway and source address gets an even share and each
//! conversation's members are spread over all of them.
//!
//! Sends are paced by one timer per worker, not per connection: every 10 ms it hands out the
//! messages due at the worker's share of the aggregate rate, round-robin over its members, so the
//! offered rate is exact whatever the number of connections. NATS publisher `k` of the run belongs
//! to worker `k % workers` and takes its turn in the same round-robin as the WebSocket senders.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connection::{self, Member, Order, Target};
use crate::control::{Command, Event, Final, LiveCounters, Tick, WorkerPlan};
use crate::ledger::{AckBook, ReceiptBook};
use crate::publisher::Publisher;
use crate::stats::{new_histogram, record, Buckets};

/// Distinct error messages kept per worker (the rest are only counted).
const MAX_ERROR_KINDS: usize = 50;
/// Queued orders per connection; beyond this the pacer counts a backlog instead of queueing.
const ORDER_QUEUE: usize = 16;
/// How long finishing connections get to close before the worker reports without them.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by a worker's connection tasks.
pub(crate) struct Shared {
    /// The gateways, in plan order.
    pub(crate) targets: Vec<Target>,
    /// Body size.
    pub(crate) payload: usize,
    /// Rate step the current sends belong to.
    pub(crate) step: AtomicU32,
    /// Event counts since the last tick.
    pub(crate) counters: LiveCounters,
    /// Connections open now.
    pub(crate) open: AtomicU64,
    /// Connections that have subscribed at least once.
    pub(crate) subscribed: AtomicU64,
    /// Connections that gave up before their first session.
    pub(crate) given_up: AtomicU64,
    secret: String,
    token_ttl_secs: u64,
    e2e: Mutex<Histogram<u64>>,
    ack: Mutex<Histogram<u64>>,
    nats_ack: Mutex<Histogram<u64>>,
    connect: Mutex<Histogram<u64>>,
    acks: Mutex<HashMap<u32, Vec<(u64, u32)>>>,
    errors: Mutex<BTreeMap<String, u64>>,
    outages: Mutex<Vec<(u64, u64)>>,
}

impl Shared {
    /// A token for `user`, valid past the end of the run.
    pub(crate) fn token_for(&self, user: &str) -> anyhow::Result<String> {
        crate::frames::mint_token(&self.secret, user, self.token_ttl_secs)
    }

    /// Records an end-to-end latency.
    pub(crate) fn record_e2e(&self, micros: u64) {
        record(&mut lock(&self.e2e), micros);
    }

    /// Records a send -> ack latency.
    pub(crate) fn record_ack(&self, elapsed: Duration) {
        record(&mut lock(&self.ack), elapsed.as_micros() as u64);
    }

    /// Records a NATS publisher's request -> reply latency (also recorded with
    /// [`Shared::record_ack`]).
    pub(crate) fn record_nats_ack(&self, elapsed: Duration) {
        record(&mut lock(&self.nats_ack), elapsed.as_micros() as u64);
    }

    /// Records how long a session took to open.
    pub(crate) fn record_connect(&self, elapsed: Duration) {
        record(&mut lock(&self.connect), elapsed.as_micros() as u64);
    }

    /// Records an acked message of conversation `conv`.
    pub(crate) fn record_acked(&self, conv: u32, seq: u64, step: u32) {
        lock(&self.acks).entry(conv).or_default().push((seq, step));
    }

    /// A connection was unserved from `span.0` (unix ms) for `span.1` ms.
    pub(crate) fn record_outage(&self, span: (u64, u64)) {
        lock(&self.outages).push(span);
    }

    /// Counts an error message (the first [`MAX_ERROR_KINDS`] kinds by text).
    pub(crate) fn note_error(&self, message: &str) {
        let mut errors = lock(&self.errors);
        let key = if errors.len() < MAX_ERROR_KINDS || errors.contains_key(message) {
            message.to_string()
        } else {
            "(other errors)".to_string()
        };
        *errors.entry(key).or_default() += 1;
    }

    /// The histograms' buckets since the last call: e2e, ack, NATS ack, connect.
    fn take_histograms(&self) -> [Buckets; 4] {
        let take = |m: &Mutex<Histogram<u64>>| {
            let mut h = lock(m);
            let b = Buckets::of(&h);
            h.reset();
            b
        };
        [
            take(&self.e2e),
            take(&self.ack),
            take(&self.nats_ack),
            take(&self.connect),
        ]
    }
}

/// Locks a mutex; a panicked holder left only counts behind, which are still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs a worker: waits for its plan, then serves commands until `Finish`.
pub(crate) async fn run(mut commands: UnboundedReceiver<Command>, events: UnboundedSender<Event>) {
    let plan = match commands.recv().await {
        Some(Command::Plan(plan)) => plan,
        _ => return,
    };
    let index = plan.index;
    if let Err(err) = drive(*plan, commands, &events).await {
        let message = format!("{err:#}");
        if events
            .send(Event::Failed {
                worker: index,
                message,
            })
            .is_err()
        {
            tracing::debug!("coordinator gone");
        }
    }
}

/// The members this worker holds.
fn members_of(plan: &WorkerPlan) -> Vec<Member> {
    let s = &plan.settings;
    let workers = plan.workers.max(1);
    let sources = s.source_addrs.len();
    (plan.index..s.total_conns())
        .step_by(workers)
        .map(|i| {
            let (conv_idx, user) = crate::setup::member_at(s, i);
            Member {
                index: i,
                user,
                conv: Arc::from(plan.convs[conv_idx].as_str()),
                conv_idx: conv_idx as u32,
                target: i % s.gateways.len(),
                source: (sources > 0).then(|| s.source_addrs[i % sources]),
                sse: crate::sse::is_sse(i, s.member_conns(), s.sse_share),
            }
        })
        .collect()
}

/// The NATS publishers this worker holds.
fn publishers_of(plan: &WorkerPlan) -> Vec<Publisher> {
    let s = &plan.settings;
    (plan.index..s.nats_publishers)
        .step_by(plan.workers.max(1))
        .map(|k| Publisher {
            index: k,
            user: crate::publisher::publisher_id(&s.run_id, k),
            convs: crate::publisher::conversations_of(k, s.nats_publishers, s.conversations)
                .map(|c| (c as u32, Arc::from(plan.convs[c].as_str())))
                .collect(),
        })
        .collect()
}

async fn drive(
    plan: WorkerPlan,
    mut commands: UnboundedReceiver<Command>,
    events: &UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let s = &plan.settings;
    crate::coordinator::raise_fd_limit();
    let mut targets = Vec::new();
    for url in &s.gateways {
        targets.push(Target {
            url: url.clone(),
            addr: crate::setup::resolve(url).await?,
        });
    }
    let shared = Arc::new(Shared {
        targets,
        payload: s.payload,
        step: AtomicU32::new(0),
        counters: LiveCounters::default(),
        open: AtomicU64::new(0),
        subscribed: AtomicU64::new(0),
        given_up: AtomicU64::new(0),
        secret: plan.jwt_secret.clone(),
        token_ttl_secs: 3600 + (s.send_secs() + s.drain) as u64 * 4,
        e2e: Mutex::new(new_histogram()),
        ack: Mutex::new(new_histogram()),
        nats_ack: Mutex::new(new_histogram()),
        connect: Mutex::new(new_histogram()),
        acks: Mutex::new(HashMap::new()),
        errors: Mutex::new(BTreeMap::new()),
        outages: Mutex::new(Vec::new()),
    });
    let members = members_of(&plan);
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
    let mine = publishers_of(&plan);
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
    let connect_per_tick = (s.connect_rate / workers / 100.0).max(0.01);
    let mut connect_credit = 1.0;
    let (mut rate, mut churn) = (0.0f64, 0.0f64);
    let (mut send_credit, mut churn_credit) = (0.0f64, 0.0f64);
    let mut next_sender = 0usize;
    let mut pace = tokio::time::interval(Duration::from_millis(10));
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
                    rate = r * senders_share(&plan);
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
                connect_credit += connect_per_tick;
                while connect_credit >= 1.0 {
                    let Some(member) = to_spawn.next() else { break };
                    connect_credit -= 1.0;
                    let (tx, rx) = mpsc::channel(ORDER_QUEUE);
                    if member.index < member_conns && !member.sse {
                        senders.push(tx.clone());
                    }
                    queues.push(tx);
                    tasks.spawn(connection::run(member, shared.clone(), rx, finish.clone()));
                }
                if !senders.is_empty() {
                    send_credit += rate * dt;
                    while send_credit >= 1.0 {
                        send_credit -= 1.0;
                        let q = &senders[next_sender % senders.len()];
                        next_sender += 1;
                        if q.try_send(Order::Send).is_err() {
                            shared.counters.send_backlog.fetch_add(1, Relaxed);
                        }
                    }
                }
                churn_credit += churn * dt;
                while churn_credit >= 1.0 && !queues.is_empty() {
                    churn_credit -= 1.0;
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
    let acks = AckBook {
        acks: std::mem::take(&mut *lock(&shared.acks))
            .into_iter()
            .collect(),
    };
    let errors = std::mem::take(&mut *lock(&shared.errors))
        .into_iter()
        .collect();
    let fin = Final {
        worker: plan.index,
        acks,
        receipts,
        unacked,
        errors,
        outages: std::mem::take(&mut *lock(&shared.outages)),
    };
    events
        .send(Event::Final(Box::new(fin)))
        .ok()
        .context("coordinator gone")?;
    Ok(())
}

/// The share of all senders (sending members and NATS publishers) that this worker holds: every
/// sender sends at the same rate.
fn senders_share(plan: &WorkerPlan) -> f64 {
    let s = &plan.settings;
    let workers = plan.workers.max(1);
    let (mut mine, mut all) = (0usize, 0usize);
    let publishers = 0..s.nats_publishers;
    for i in crate::sse::senders(s.member_conns(), s.sse_share).chain(publishers) {
        all += 1;
        mine += usize::from(i % workers == plan.index);
    }
    if all == 0 {
        return 0.0;
    }
    mine as f64 / all as f64
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
    use crate::args::{Settings, Step};

    fn plan(index: usize, workers: usize) -> WorkerPlan {
        let settings = Settings {
            scenario: None,
            gateways: vec!["ws://127.0.0.1:1/ws".into(), "ws://127.0.0.1:2/ws".into()],
            jwt_secret: String::new(),
            source_addrs: vec![
                [127, 0, 0, 2].into(),
                [127, 0, 0, 3].into(),
                [127, 0, 0, 4].into(),
            ],
            conversations: 3,
            members: 4,
            steps: vec![Step {
                rate: 1.0,
                secs: 1.0,
            }],
            payload: 10,
            sse_share: 0.25,
            nats_publishers: 0,
            nats_url: String::new(),
            churn: 0.0,
            idle: 5,
            idle_room_size: 2,
            storm_at: None,
            connect_rate: 1.0,
            drain: 0.0,
            workers,
            fabric_pids: vec![],
            p99_target_ms: 50.0,
            run_id: "t".into(),
        };
        let convs = (0..settings.conversations + settings.idle_conversations())
            .map(|i| format!("g{i}"))
            .collect();
        WorkerPlan {
            index,
            workers,
            settings,
            jwt_secret: String::new(),
            convs,
            in_process: false,
        }
    }

    #[test]
    fn workers_split_connections_evenly_and_spread_gateways_and_sources() {
        let all: Vec<Member> = (0..3).flat_map(|w| members_of(&plan(w, 3))).collect();
        assert_eq!(all.len(), 17);
        let mut indexes: Vec<usize> = all.iter().map(|m| m.index).collect();
        indexes.sort_unstable();
        assert_eq!(
            indexes,
            (0..17).collect::<Vec<_>>(),
            "each connection exactly once"
        );
        let users: std::collections::HashSet<_> = all.iter().map(|m| &m.user).collect();
        assert_eq!(users.len(), 17, "each connection its own user");
        // Member 5 is conversation 1's second member; 12 is the first idle one.
        let m5 = all.iter().find(|m| m.index == 5).unwrap();
        assert_eq!((m5.conv_idx, &*m5.conv, m5.target), (1, "g1", 1));
        assert_eq!(m5.source, Some([127, 0, 0, 4].into()));
        let idle = all.iter().find(|m| m.index == 12).unwrap();
        assert_eq!((idle.conv_idx, &*idle.conv), (3, "g3"));
        // Worker shares of the senders add up to the whole rate.
        let share: f64 = (0..3).map(|w| senders_share(&plan(w, 3))).sum();
        assert!((share - 1.0).abs() < 1e-9);
    }

    #[test]
    fn publishers_are_spread_over_workers_and_take_a_sender_share() {
        let with_publishers = |w| {
            let mut p = plan(w, 3);
            p.settings.nats_publishers = 4;
            p
        };
        let all: Vec<Publisher> = (0..3)
            .flat_map(|w| publishers_of(&with_publishers(w)))
            .collect();
        let mut indexes: Vec<usize> = all.iter().map(|p| p.index).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, [0, 1, 2, 3], "each publisher exactly once");
        // 4 publishers over 3 conversations: publisher 3 shares conversation 0 with publisher 0.
        let p3 = all.iter().find(|p| p.index == 3).unwrap();
        assert_eq!(p3.user, "t-bot3");
        assert_eq!(p3.convs, [(0, Arc::from("g0"))]);
        // 9 WebSocket senders (12 members, a quarter SSE) and 4 publishers share the rate.
        let shares: Vec<f64> = (0..3).map(|w| senders_share(&with_publishers(w))).collect();
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(with_publishers(0).settings.ws_senders(), 9);
        assert!((with_publishers(0).settings.nats_share() - 4.0 / 13.0).abs() < 1e-9);
    }
}
