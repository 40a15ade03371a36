//! The embedded history backend: one SQLite file in WAL mode.
//!
//! # Threads
//!
//! rusqlite is blocking, so the store never runs SQLite on the async runtime:
//!
//! - **One writer thread** owns the only write connection and takes [`WriteJob`]s from a bounded
//!   channel. When several batches are queued (several partitions draining at once) it commits them
//!   in one transaction (group commit): fewer commits, same guarantees, since every waiting caller is
//!   answered only after that commit.
//! - **A small pool of read connections** serves [`HistoryStore::page`] on tokio's blocking pool.
//!   WAL lets readers run concurrently with the writer, so history reads never queue behind writes.
//! - **A checkpointer thread** copies the WAL into the database every [`CHECKPOINT_EVERY`]
//!   (`PASSIVE`, concurrent with writes). SQLite's automatic checkpoints would run inside a
//!   writer's commit, and their fsync would stall the write path (on a slow disk it was the
//!   largest cost of a batch). When the WAL outgrows [`WAL_RESTART_PAGES`] a `RESTART` checkpoint
//!   briefly holds the writer so the WAL file is reused instead of growing.
//!
//! A gateway opens the same file with [`SqliteStore::open_for_reads`]: the read pool only, no
//! writer thread and no checkpointer, and no migrations (the writer owns the schema; see
//! [`crate::schema`]).
//!
//! # Files
//!
//! - `config.rs`: where and how to open the file (path, durability, readers);
//! - `schema.rs`: the migrations, the writer's `migrate` and the reader's version check;
//! - `write.rs`: the writer thread (group commit) and the checkpointer;
//! - `read.rs`: the pool of read connections, pages and watermarks.
//!
//! # Write cost
//!
//! Rows are appended to a rowid table and found through a unique `(conv, seq)` index (schema v2).
//! What a commit costs is the pages it dirties, each written whole to the WAL: appended rows
//! dirty a few sequential pages, and the index one small-entry leaf per conversation in the batch.
//! Clustering rows by conversation (v1) dirtied one full row leaf per conversation instead, and
//! halved the write rate. The writer keeps a large page cache so those leaves are not re-read.
//!
//! # Durability
//!
//! The default is `synchronous=NORMAL`. In WAL mode a commit is appended to the WAL with `write()`
//! before `write_batch` returns, so it survives the death of the process (panic, OOM kill,
//! `kill -9`): the data is in the OS page cache and SQLite replays it on the next open. It is
//! fsync'd at checkpoints, so an OS crash or power cut may roll back the last commits — together
//! with their watermark, which lives in the same transaction, so the store stays consistent but
//! those messages (already acked to JetStream) would only remain in JetStream. That is the promise
//! we make (an acked message survives any single process dying); choose
//! [`Synchronous::Full`] (fsync on every commit) to also survive OS crashes, at a lower write rate.

use async_trait::async_trait;
use chatfabric_nats::ConvId;
use rusqlite::OpenFlags;

use crate::store::{HistoryStore, PageQuery, StoreError, StoredRecord, Watermark};
use config::connect;
use read::ReadPool;
use write::Writer;

mod config;
mod read;
mod schema;
mod write;

pub use config::{SqliteConfig, Synchronous};
pub use write::{CHECKPOINT_EVERY, WAL_RESTART_PAGES};

/// The SQLite [`HistoryStore`]. Cheap to share behind an `Arc`; dropping the last handle stops the
/// writer thread after it finished the queued batches.
pub struct SqliteStore {
    /// The writer and checkpointer threads. `None` for a store opened with
    /// [`SqliteStore::open_for_reads`]: writes and checkpoints are the writing process's job.
    writer: Option<Writer>,
    /// The read connections.
    readers: ReadPool,
}

impl SqliteStore {
    /// Opens the database as its writer: creates it (with its directory) if needed, migrates its
    /// schema, and starts the writer and checkpointer threads. Refuses a database whose schema is
    /// newer than this build ([`StoreError::SchemaTooNew`]).
    pub async fn open(config: SqliteConfig) -> Result<Self, StoreError> {
        tokio::task::spawn_blocking(move || {
            let writer = Writer::start(&config)?;
            Ok(Self {
                writer: Some(writer),
                readers: ReadPool::open(&config)?,
            })
        })
        .await
        .map_err(|_| StoreError::WorkerGone("SQLite open"))?
    }

    /// Opens the database for history reads only: read connections, but no writer thread and no
    /// checkpointer, so a gateway sharing the file with a persister never competes for the write
    /// lock or runs checkpoints. [`write_batch`](HistoryStore::write_batch) fails with
    /// [`StoreError::ReadOnly`].
    ///
    /// It never creates or migrates anything: the file must hold exactly the schema this build
    /// reads, else [`StoreError::SchemaMissing`] (no file, or no schema yet: the persister has not
    /// run), [`StoreError::SchemaOutdated`] or [`StoreError::SchemaTooNew`]. Checkpoints are the
    /// persister's job: without one running, the WAL only grows while something writes, which is
    /// exactly when a persister runs.
    pub async fn open_for_reads(config: SqliteConfig) -> Result<Self, StoreError> {
        tokio::task::spawn_blocking(move || Self::open_readers_blocking(config))
            .await
            .map_err(|_| StoreError::WorkerGone("SQLite open"))?
    }

    fn open_readers_blocking(config: SqliteConfig) -> Result<Self, StoreError> {
        let store = config.path.display().to_string();
        if !config.path.is_file() {
            return Err(StoreError::SchemaMissing { store });
        }
        // A read-write connection (never creating the file) first: it may create the WAL's
        // shared-memory file, which read-only connections cannot.
        let setup = connect(
            &config.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::SqliteOpen {
            path: store.clone(),
            source,
        })?;
        schema::check_readable(&setup, &store)?;
        let readers = ReadPool::open(&config)?;
        // Closed only once the readers hold the file open, so it is not the last connection and
        // does not checkpoint or remove the WAL on the way out.
        drop(setup);
        Ok(Self {
            writer: None,
            readers,
        })
    }
}

#[async_trait]
impl HistoryStore for SqliteStore {
    async fn write_batch(
        &self,
        records: &[StoredRecord],
        watermark: Option<Watermark>,
    ) -> Result<(), StoreError> {
        if records.is_empty() && watermark.is_none() {
            return Ok(());
        }
        let writer = self.writer.as_ref().ok_or(StoreError::ReadOnly)?;
        writer.write(records, watermark).await
    }

    async fn page(&self, conv: &ConvId, query: PageQuery) -> Result<Vec<StoredRecord>, StoreError> {
        self.readers.page(conv, query).await
    }

    async fn watermark(&self, partition: u16) -> Result<u64, StoreError> {
        self.readers.watermark(partition).await
    }
}
