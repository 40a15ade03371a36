//! What a worker shares with its connection and publisher tasks: the gateways they connect to,
//! the [`Order`]s the worker's pacer gives them, and [`Shared`], where they count and record what
//! they see until the worker's next tick takes it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::control::{Final, LiveCounters};
use crate::ledger::{AckBook, ReceiptBook};
use crate::stats::{new_histogram, record, Buckets};

/// Distinct error messages kept per worker (the rest are only counted).
const MAX_ERROR_KINDS: usize = 50;

/// A gateway to connect to.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The WebSocket URL (sent in the upgrade request).
    pub(crate) url: String,
    /// Where its host:port resolved.
    pub(crate) addr: SocketAddr,
}

/// What the worker tells a connection to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Send one message now.
    Send,
    /// Drop the session abruptly and resume.
    Drop,
}

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
    /// Nothing counted yet; tokens for `secret` valid `token_ttl_secs`.
    pub(crate) fn new(
        targets: Vec<Target>,
        payload: usize,
        secret: String,
        token_ttl_secs: u64,
    ) -> Shared {
        Shared {
            targets,
            payload,
            step: AtomicU32::new(0),
            counters: LiveCounters::default(),
            open: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            secret,
            token_ttl_secs,
            e2e: Mutex::new(new_histogram()),
            ack: Mutex::new(new_histogram()),
            nats_ack: Mutex::new(new_histogram()),
            connect: Mutex::new(new_histogram()),
            acks: Mutex::new(HashMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            outages: Mutex::new(Vec::new()),
        }
    }

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

    /// Worker `worker`'s final accounting: what its receivers saw (`receipts`) and the sends
    /// left waiting (`unacked`), with the acks, errors and outages recorded here.
    pub(crate) fn take_final(&self, worker: usize, receipts: ReceiptBook, unacked: u64) -> Final {
        Final {
            worker,
            acks: AckBook {
                acks: std::mem::take(&mut *lock(&self.acks)).into_iter().collect(),
            },
            receipts,
            unacked,
            errors: std::mem::take(&mut *lock(&self.errors))
                .into_iter()
                .collect(),
            outages: std::mem::take(&mut *lock(&self.outages)),
        }
    }

    /// The histograms' buckets since the last call: e2e, ack, NATS ack, connect.
    pub(crate) fn take_histograms(&self) -> [Buckets; 4] {
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
