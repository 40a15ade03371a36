//! The SQLite read side: a small pool of read-only connections serving pages and watermarks on
//! tokio's blocking pool. Both roles have one; a reader ([`SqliteStore::open_for_reads`]) has
//! nothing else.
//!
//! [`SqliteStore::open_for_reads`]: super::SqliteStore::open_for_reads

use std::sync::{Arc, Mutex};

use chatfabric_nats::ConvId;
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::Semaphore;

use super::config::{connect, SqliteConfig};
use crate::store::{
    bound_to_i64, record_from_columns, PageQuery, RecordColumns, StoreError, StoredRecord,
};

pub(super) const PAGE_DESC: &str = "SELECT seq, id, sender, client_id, ts, body FROM messages \
     WHERE conv = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4";
const PAGE_ASC: &str = "SELECT seq, id, sender, client_id, ts, body FROM messages \
     WHERE conv = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4";
const READ_WATERMARK: &str = "SELECT seq FROM watermarks WHERE partition = ?1";

/// Page cache of each read connection, in KiB; reads also go through `mmap`.
const READER_CACHE_KIB: i64 = 8 * 1024;
/// How much of the database file readers map into memory: a page read from the map costs no
/// `read()` system call and no copy into SQLite's cache.
const READER_MMAP_BYTES: i64 = 1 << 30;

/// Idle read connections and one permit per connection.
pub(super) struct ReadPool {
    /// Idle read connections; a permit of `permits` guarantees one is there.
    idle: Arc<Mutex<Vec<Connection>>>,
    /// One permit per read connection.
    permits: Arc<Semaphore>,
}

impl ReadPool {
    /// Opens the read connections of the pool (at least one). Blocking.
    pub(super) fn open(config: &SqliteConfig) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::SqliteOpen {
            path: config.path.display().to_string(),
            source,
        };
        let readers = (0..config.readers.max(1))
            .map(|_| {
                let conn = connect(
                    &config.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(open_err)?;
                conn.execute_batch(&format!(
                    "PRAGMA cache_size = -{READER_CACHE_KIB}; PRAGMA mmap_size = {READER_MMAP_BYTES};"
                ))
                .map_err(open_err)?;
                Ok(conn)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(readers.len())),
            idle: Arc::new(Mutex::new(readers)),
        })
    }

    /// Runs `f` on an idle read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::WorkerGone("SQLite reader pool"))?;
        let pool = Arc::clone(&self.idle);
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .lock()
                .map_err(|_| StoreError::WorkerGone("SQLite reader pool"))?
                .pop()
                .ok_or(StoreError::WorkerGone("SQLite reader pool"))?;
            let out = f(&conn);
            if let Ok(mut idle) = pool.lock() {
                idle.push(conn);
            }
            drop(permit);
            out
        })
        .await
        .map_err(|_| StoreError::WorkerGone("SQLite reader"))?
    }

    /// One page of `conv`'s history, as [`HistoryStore::page`](crate::HistoryStore::page).
    pub(super) async fn page(
        &self,
        conv: &ConvId,
        query: PageQuery,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let limit = query.capped_limit();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let conv = conv.clone();
        self.read(move |conn| {
            let sql = if query.anchored_after() {
                PAGE_ASC
            } else {
                PAGE_DESC
            };
            let after = query.after.map(bound_to_i64).unwrap_or(0);
            let before = query.before.map(bound_to_i64).unwrap_or(i64::MAX);
            let err = |source| StoreError::Sqlite {
                op: "reading a page",
                source,
            };
            let mut stmt = conn.prepare_cached(sql).map_err(err)?;
            let rows = stmt
                .query_map(params![conv.as_str(), after, before, limit as i64], |r| {
                    Ok(RecordColumns {
                        seq: r.get(0)?,
                        id: r.get(1)?,
                        sender: r.get(2)?,
                        client_id: r.get(3)?,
                        ts: r.get(4)?,
                        body: r.get(5)?,
                    })
                })
                .map_err(err)?;
            let mut page = Vec::with_capacity(limit);
            for row in rows {
                page.push(record_from_columns(&conv, row.map_err(err)?)?);
            }
            if query.anchored_after() {
                page.reverse();
            }
            Ok(page)
        })
        .await
    }

    /// The stored watermark of `partition`, as
    /// [`HistoryStore::watermark`](crate::HistoryStore::watermark).
    pub(super) async fn watermark(&self, partition: u16) -> Result<u64, StoreError> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached(READ_WATERMARK)
                    .map_err(|source| StoreError::Sqlite {
                        op: "reading the watermark",
                        source,
                    })?;
            let seq: Option<i64> = stmt
                .query_row(params![i64::from(partition)], |r| r.get(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    source => Err(StoreError::Sqlite {
                        op: "reading the watermark",
                        source,
                    }),
                })?;
            Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
        })
        .await
    }
}
