//! chatfabric's persister: drains the message streams into a history store.
//!
//! # Layout
//!
//! The data path is WS/SSE frame -> command -> subject -> JetStream -> fan-out/**persister** ->
//! store. This crate owns the bold part; the store itself (the [`HistoryStore`] contract, its
//! SQLite and ScyllaDB backends and their schemas) is the `chatfabric-storage` crate, which the
//! gateway reads from too.
//!
//! - [`drain`]: the JetStream side. One durable pull consumer per partition stream fetches
//!   batches, parses them, hands them to the store, and acks only after the store committed them;
//!   poison messages go to the dead-letter stream. It also publishes the store's watermarks.
//! - [`metrics`]: the persister's Prometheus metrics (lag, batch sizes, write latency, dead letters).
//! - [`config`]: command-line flags ([`PersisterArgs`], which flattens the storage crate's
//!   [`StoreArgs`](chatfabric_storage::StoreArgs)).
//!
//! `chatfabric persister` is: parse [`PersisterArgs`], open the store as its writer
//! ([`chatfabric_storage::open_store`], which creates and migrates the schema), connect and
//! `chatfabric_nats::provision`, register [`Metrics`], then [`run`] until the shutdown token fires.
//!
//! [`HistoryStore`]: chatfabric_storage::HistoryStore
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod drain;
pub mod metrics;

pub use config::PersisterArgs;
pub use drain::{prepare, run, DrainConfig, PersistError};
pub use metrics::Metrics;
