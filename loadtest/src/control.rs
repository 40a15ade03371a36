//! The coordinator <-> worker protocol: a worker is driven by [`Command`]s and answers with
//! [`Event`]s, over either transport of `link` (JSON lines to a worker process, or channels to a
//! worker in the coordinator's process).
//!
//! The conversation: `Plan` first; the worker connects its share of the connections and sends a
//! `Tick` every second; `Rate`, `Churn` and `Storm` steer it; `Finish` makes it close everything
//! and answer with one `Final`. A worker whose stdin closes finishes as if told to.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::ledger::{AckBook, ReceiptBook};
use crate::plan::WorkerPlan;
use crate::stats::Buckets;

/// Coordinator -> worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Command {
    /// The worker's share of the run; always the first command.
    Plan(Box<WorkerPlan>),
    /// Send at this aggregate rate (the worker takes its share); `step` labels the messages.
    Rate { rate: f64, step: u32 },
    /// Drop-and-resume this many connections per second, over all workers.
    Churn { per_sec: f64 },
    /// Every connection drops and resumes now.
    Storm,
    /// Close every connection and report.
    Finish,
}

/// Tells the coordinator that worker `worker` cannot go on; a coordinator already gone needs
/// to know nothing.
pub(crate) fn report_failure(events: &UnboundedSender<Event>, worker: usize, message: String) {
    if events.send(Event::Failed { worker, message }).is_err() {
        tracing::debug!("coordinator gone before worker {worker} ended");
    }
}

/// Worker -> coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    /// The last second's activity.
    Tick(Box<Tick>),
    /// Everything is closed: the final accounting.
    Final(Box<Final>),
    /// The worker cannot go on.
    Failed { worker: usize, message: String },
}

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Event counts (per tick: since the last tick).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
        pub(crate) struct Counters {
            $($(#[doc = $doc])* pub(crate) $name: u64,)*
        }

        impl Counters {
            /// Adds `other` to these counts.
            pub(crate) fn add(&mut self, other: &Counters) {
                $(self.$name += other.$name;)*
            }
        }

        /// [`Counters`] that connection tasks bump concurrently.
        #[derive(Debug, Default)]
        pub(crate) struct LiveCounters {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl LiveCounters {
            /// The counts since the last call.
            pub(crate) fn take(&self) -> Counters {
                Counters { $($name: self.$name.swap(0, Relaxed),)* }
            }
        }
    };
}

counters! {
    /// `send` frames written and NATS posts made (retries not included).
    sent,
    /// `ack` frames received (WebSocket and NATS).
    acked,
    /// Acks that said `duplicate: true` (a retried send that had been stored).
    ack_duplicates,
    /// `error` replies to sends: the message was not stored.
    send_errors,
    /// Sends written again (same `client_id`): after a reconnect because their ack had not
    /// arrived, or after an `unavailable` answer.
    resent,
    /// `unavailable` answers to sends (not known to be stored), each retried with the same id.
    unavailable,
    /// Sessions given up because the gateway answered nothing, not even pings, for a while.
    stalls,
    /// Sessions that moved to another gateway after a failure.
    failovers,
    /// Sends the pacer could not hand to a connection (its queue was full or it was down).
    send_backlog,
    /// New `msg` frames (duplicates not included).
    delivered,
    /// Bytes of those frames' text (the WebSocket payload, or the SSE event's data).
    delivered_bytes,
    /// `msg` frames seen before.
    duplicates,
    /// `msg` frames whose `prev` broke the chain.
    order_violations,
    /// Sessions established (connected, authenticated, subscribed), first or resumed.
    connects,
    /// Session attempts that failed.
    connect_failures,
    /// Sessions established after a drop.
    reconnects,
    /// Closes with 4008 (slow consumer).
    slow_consumer_closes,
    /// Closes with 1001 (gateway going away).
    going_away_closes,
    /// Other closes and read errors.
    other_closes,
    /// `error` frames other than failed sends.
    errors,
    /// Of `sent`, the NATS publishers' posts.
    nats_sent,
    /// Of `acked`, the NATS publishers' acks.
    nats_acked,
}

/// One second of a worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Tick {
    pub(crate) worker: usize,
    pub(crate) counters: Counters,
    /// End-to-end latency (send -> receive), microseconds.
    pub(crate) e2e: Buckets,
    /// Send -> ack latency, microseconds (WebSocket and NATS).
    pub(crate) ack: Buckets,
    /// Of those, the NATS publishers' (request -> reply).
    #[serde(default)]
    pub(crate) nats_ack: Buckets,
    /// Session establishment latency, microseconds.
    pub(crate) connect: Buckets,
    /// Connections open now.
    pub(crate) open: u64,
    /// Connections that have subscribed at least once.
    pub(crate) subscribed: u64,
    /// Connections that gave up before their first session.
    pub(crate) given_up: u64,
    /// Connections this worker holds.
    pub(crate) assigned: u64,
    /// The worker process's CPU seconds so far (`None` in-process).
    pub(crate) cpu_secs: Option<f64>,
}

/// A worker's final accounting.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Final {
    pub(crate) worker: usize,
    /// Acked messages of the conversations this worker's members sent to.
    pub(crate) acks: AckBook,
    /// What this worker's receivers saw.
    pub(crate) receipts: ReceiptBook,
    /// Sends still waiting for their ack at the end.
    pub(crate) unacked: u64,
    /// Error messages and how often each came.
    pub(crate) errors: Vec<(String, u64)>,
    /// Connection outages, `(start unix ms, duration ms)` (see `outage`).
    #[serde(default)]
    pub(crate) outages: Vec<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_events_are_single_json_lines() {
        let c = serde_json::to_string(&Command::Rate {
            rate: 10.0,
            step: 2,
        })
        .unwrap();
        assert_eq!(c, r#"{"cmd":"rate","rate":10.0,"step":2}"#);
        let tick = Event::Tick(Box::new(Tick {
            worker: 1,
            counters: Counters {
                delivered: 5,
                ..Counters::default()
            },
            ..Tick::default()
        }));
        let line = serde_json::to_string(&tick).unwrap();
        assert!(!line.contains('\n'));
        match serde_json::from_str::<Event>(&line).unwrap() {
            Event::Tick(t) => assert_eq!((t.worker, t.counters.delivered), (1, 5)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn live_counters_hand_out_deltas() {
        let live = LiveCounters::default();
        live.sent.fetch_add(3, Relaxed);
        assert_eq!(live.take().sent, 3);
        assert_eq!(live.take().sent, 0);
        let mut total = Counters::default();
        total.add(&Counters {
            sent: 2,
            acked: 1,
            ..Counters::default()
        });
        total.add(&Counters {
            sent: 2,
            ..Counters::default()
        });
        assert_eq!((total.sent, total.acked), (4, 1));
    }
}
