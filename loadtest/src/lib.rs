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
//! frame**; this crate owns both ends of it and nothing in between. A run goes
//! [`run`] (`coordinator`) -> `link` -> `worker` -> `connection` / `sse` / `publisher`, and back
//! as ticks into the `collector` and the `report`.
//!
//! Modules import only from the layers above them in this list (no import circles):
//!
//! 1. Foundations, importing nothing of this crate (`outage` only `frames`' clock):
//!    - [`args`]: [`LoadtestArgs`] (the command line) and the named [`Scenario`]s that fill its
//!      defaults.
//!    - `frames`: the JSON frames as the load generator writes and reads them, and the
//!      timestamped message body that gives end-to-end latency without a clock protocol.
//!    - `ledger`: loss, duplicate and order accounting against the fabric's cursors.
//!    - `stats`: HDR histograms that merge across workers.
//!    - `procstat`: everything read from `/proc`: CPU seconds and RSS of one process, of the
//!      fabric's processes together, and the machine's busy time.
//!    - `outage`: how long connections went unserved, merged into one outage per fault.
//!    - `progress`: the live progress line.
//! 2. What a run is:
//!    - `settings`: the flags resolved over the scenario's preset and checked.
//!    - `plan`: who every connection and publisher is, which conversation, worker, gateway and
//!      source address it gets, who sends and who receives over SSE, and each worker's share of
//!      the rate: pure functions of the settings, so every process agrees without talking.
//!    - `preflight`: the open-file limit, and the settings checked against this machine.
//!    - `control`: the coordinator <-> worker messages.
//! 3. A worker's tasks:
//!    - `shared`: what a worker's tasks share: gateways, orders, counters and histograms.
//!    - `session`: what both kinds of session share (dialing from a source address, reading a
//!      server frame into the ledger, the sends waiting for an ack).
//!    - `sse`: a member that receives over server-sent events.
//!    - `connection`: one member connection over WebSocket (or SSE): sessions, sends, failover,
//!      same-id retries and resumption from its cursor.
//!    - `publisher`: a NATS-direct publisher (a bot posting on `chat.in.<conv>.<bot>`): the other
//!      way in, **NATS request** -> ingest -> JetStream, feeding the same ledger.
//!    - `setup`: creates the run's conversations over WebSocket, resolves gateway URLs.
//! 4. The processes:
//!    - `worker`: holds a share of the connections, paces their sends and reports every second.
//!    - `link`: the two transports to a worker (JSON lines to a worker process, channels
//!      in-process). Worker processes exist because one process may hold at most 20,000 file
//!      descriptors on our machines.
//! 5. The results:
//!    - `report`: what a run measured (the JSON document).
//!    - `targets`: the performance targets, and what a report says about each.
//!    - `render`: the text summary and, next to it, the self-contained HTML report.
//!    - `collector`: merges the workers' ticks into the timeline and steps, and their final
//!      accounting into the report.
//! 6. The entry points:
//!    - `floor`: `chatfabric loadtest floor`, one `write(2)` per delivery to loopback sockets:
//!      the floor the fabric's CPU per delivery is set against.
//!    - `coordinator`: [`run`] walks the phases of a load test: conversations, workers, connect,
//!      rate schedule, drain, report.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod args;
mod collector;
mod connection;
mod control;
mod coordinator;
mod floor;
mod frames;
mod ledger;
mod link;
mod outage;
mod plan;
mod preflight;
mod procstat;
mod progress;
mod publisher;
mod render;
mod report;
mod session;
mod settings;
mod setup;
mod shared;
mod sse;
mod stats;
mod targets;
mod worker;

pub use args::{FloorArgs, LoadtestArgs, Scenario, Tool};
pub use coordinator::run;
