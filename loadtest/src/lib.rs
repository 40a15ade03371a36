//! chatfabric's load generator: `chatfabric loadtest`.
//!
//! It drives a running fabric the way clients do, from the outside: every member of every
//! conversation is its own WebSocket connection, messages go in with `send` and come back as `msg`
//! frames, and the figures it reports are the ones the performance targets are written in
//! (latency percentiles, deliveries per second, loss, server CPU per delivery, RSS per connection).
//!
//! # Layout
//!
//! The data path it exercises is **WS frame** -> command -> subject -> JetStream -> fan-out -> **WS
//! frame**; this crate owns both ends of it and nothing in between.
//!
//! - [`args`]: [`LoadtestArgs`] (the command line) and the named scenarios that fill its defaults.
//! - `coordinator`: [`run`]: creates the conversations, starts the workers, walks the rate
//!   schedule, samples the fabric's processes and assembles the report.
//! - `control`: the coordinator <-> worker protocol (JSON lines over a worker process's
//!   stdin/stdout, or channels for an in-process worker). Workers exist because one process may hold
//!   at most 20,000 file descriptors on our machines.
//! - `worker`: holds a share of the connections, paces their sends and reports every second.
//! - `connection`: one member connection: connect from a chosen source address, authenticate,
//!   subscribe, send, receive, and resume from its cursor after a drop.
//! - `sse`: the same, for a member that receives over server-sent events.
//! - `publisher`: a NATS-direct publisher (a bot posting on `chat.in.<conv>.<bot>`): the other
//!   way in, **NATS request** -> ingest -> JetStream, feeding the same ledger.
//! - `frames`: the JSON frames as the load generator writes and reads them, and the timestamped
//!   message body that gives end-to-end latency without a clock protocol.
//! - `ledger`: loss, duplicate and order accounting against the fabric's cursors.
//! - `outage`: how long connections went unserved (broken sessions, unacknowledged sends),
//!   merged into one outage per fault.
//! - `stats`: HDR histograms that merge across workers.
//! - `procstat`: CPU seconds and RSS of the fabric's processes and of our own, from `/proc`.
//! - `report`, `html`: the human summary, the JSON document and the self-contained HTML report.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod args;
mod connection;
mod control;
mod coordinator;
mod frames;
mod html;
mod ledger;
mod outage;
mod procstat;
mod publisher;
mod report;
mod setup;
mod sse;
mod stats;
mod worker;

pub use args::{LoadtestArgs, Scenario};
pub use coordinator::run;
