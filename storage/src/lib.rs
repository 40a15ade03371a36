//! chatfabric's history store: where the persister puts messages and the gateway reads pages.
//!
//! # Layout
//!
//! The data path is WS/SSE frame -> command -> subject -> JetStream -> fan-out/persister ->
//! **store**. This crate is the bold part, shared by the persister (the only writer) and the
//! gateway (a reader); neither depends on the other.
//!
//! - [`store`]: the [`HistoryStore`] contract between the drain (writes) and the gateway (history
//!   pages): idempotency, durability point, ordering, watermarks; and [`StoreError`].
//! - [`schema`]: who owns the schema. The writer ([`open_store`]) creates and migrates it; a
//!   reader ([`open_store_for_reads`]) never does, and refuses a schema it does not know.
//! - [`sqlite`]: the embedded backend (one file, WAL) for single-node deployments.
//! - [`scylla`]: the clustered backend (ScyllaDB / Cassandra).
//! - [`pending`]: a reader that started before the writer created the schema.
//! - [`config`]: the command-line flags that name the store ([`StoreArgs`]), flattened into the
//!   persister's and the gateway's flags, and the two ways to open it.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod pending;
pub mod schema;
pub mod scylla;
pub mod sqlite;
pub mod store;

pub use config::{open_store, open_store_for_reads, ConsistencyArg, StoreArgs, StoreKind};
pub use scylla::cql::Replication;
pub use scylla::{ScyllaConfig, ScyllaStore};
pub use sqlite::{SqliteConfig, SqliteStore, Synchronous};
pub use store::{HistoryStore, PageQuery, StoreError, StoredRecord, Watermark, MAX_PAGE_LIMIT};
