//! chatfabric's persister: drains the message streams into a history store.
//!
//! # Layout
//!
//! The data path is WS/SSE frame -> command -> subject -> JetStream -> fan-out/**persister ->
//! store**. This crate owns the bold part:
//!
//! - [`drain`]: the JetStream side. One durable pull consumer per partition stream fetches
//!   batches, parses them, hands them to the store, and acks only after the store committed them;
//!   poison messages go to the dead-letter stream. It also publishes the store's watermarks.
//! - [`store`]: the [`HistoryStore`] contract between the drain (writes) and the gateway (history
//!   pages): idempotency, durability point, ordering, watermarks.
//! - [`sqlite`]: the embedded backend (one file, WAL) for single-node deployments.
//! - [`scylla`]: the clustered backend (ScyllaDB / Cassandra).
//! - [`metrics`]: the persister's Prometheus metrics (lag, batch sizes, write latency, dead letters).
//! - [`config`]: command-line flags ([`PersisterArgs`], [`StoreArgs`]), [`open_store`] (used by
//!   `chatfabric persister`) and [`open_store_for_reads`] (used by the gateway to read pages from
//!   the same store without a writer).
//!
//! `chatfabric persister` is: parse [`PersisterArgs`], [`open_store`], connect and
//! `chatfabric_nats::provision`, register [`Metrics`], then [`run`] until the shutdown token fires.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod drain;
pub mod metrics;
pub mod scylla;
pub mod sqlite;
pub mod store;

pub use config::{open_store, open_store_for_reads, PersisterArgs, StoreArgs, StoreKind};
pub use drain::{prepare, run, DrainConfig, PersistError};
pub use metrics::Metrics;
pub use scylla::{ScyllaConfig, ScyllaStore};
pub use sqlite::{SqliteConfig, SqliteStore};
pub use store::{HistoryStore, PageQuery, StoreError, StoredRecord, Watermark, MAX_PAGE_LIMIT};
