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
//! writer thread and no checkpointer.
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

use std::path::PathBuf;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chatfabric_nats::ConvId;
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::{
    bound_to_i64, record_columns, record_from_columns, HistoryStore, PageQuery, RecordColumns,
    StoreError, StoredRecord, Watermark,
};

/// Schema migrations, applied in order; `PRAGMA user_version` counts the ones applied. Append only.
const MIGRATIONS: &[&str] = &[
    // v1: messages clustered by (conv, seq), so a page is one range scan of the primary key.
    "CREATE TABLE messages (
        conv      TEXT    NOT NULL,
        seq       INTEGER NOT NULL,
        id        TEXT    NOT NULL,
        sender    TEXT    NOT NULL,
        client_id TEXT    NOT NULL,
        ts        INTEGER NOT NULL,
        body      TEXT    NOT NULL,
        PRIMARY KEY (conv, seq)
    ) WITHOUT ROWID;
    CREATE TABLE watermarks (
        partition INTEGER PRIMARY KEY,
        seq       INTEGER NOT NULL
    );",
    // v2: the rows move to a rowid table (appended in commit order) with a unique (conv, seq)
    // index. Clustering rows by conversation made every commit rewrite one 4 KiB leaf per
    // conversation it touched (a 256-message batch over 1000 conversations wrote ~1 MiB of WAL);
    // appending rows dirties a few sequential pages and the index's small entries a few more,
    // which doubled the write rate. A page costs one index range scan plus one rowid lookup per
    // message, still well inside the read budget.
    "CREATE TABLE messages_v2 (
        conv      TEXT    NOT NULL,
        seq       INTEGER NOT NULL,
        id        TEXT    NOT NULL,
        sender    TEXT    NOT NULL,
        client_id TEXT    NOT NULL,
        ts        INTEGER NOT NULL,
        body      TEXT    NOT NULL
    );
    INSERT INTO messages_v2 (conv, seq, id, sender, client_id, ts, body)
        SELECT conv, seq, id, sender, client_id, ts, body FROM messages ORDER BY conv, seq;
    DROP TABLE messages;
    ALTER TABLE messages_v2 RENAME TO messages;
    CREATE UNIQUE INDEX messages_by_conv ON messages (conv, seq);",
];

const INSERT_MESSAGE: &str =
    "INSERT OR IGNORE INTO messages (conv, seq, id, sender, client_id, ts, body) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const RAISE_WATERMARK: &str = "INSERT INTO watermarks (partition, seq) VALUES (?1, ?2) \
     ON CONFLICT (partition) DO UPDATE SET seq = max(seq, excluded.seq)";
const PAGE_DESC: &str = "SELECT seq, id, sender, client_id, ts, body FROM messages \
     WHERE conv = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4";
const PAGE_ASC: &str = "SELECT seq, id, sender, client_id, ts, body FROM messages \
     WHERE conv = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4";
const READ_WATERMARK: &str = "SELECT seq FROM watermarks WHERE partition = ?1";

/// Page cache of the writer connection, in KiB. The index leaves every commit touches (one per
/// conversation written) stay in memory instead of being re-read from the file (SQLite's default
/// is 2 MiB, which a busy store outgrows at once).
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// Page cache of each read connection, in KiB; reads also go through `mmap`.
const READER_CACHE_KIB: i64 = 8 * 1024;
/// How much of the database file readers map into memory: a page read from the map costs no
/// `read()` system call and no copy into SQLite's cache.
const READER_MMAP_BYTES: i64 = 1 << 30;
/// Size the WAL file is truncated to after a `RESTART` checkpoint (it is reused, not regrown, up
/// to this size).
const WAL_SIZE_LIMIT_BYTES: i64 = 64 << 20;

/// Queued write batches the writer thread may hold before callers wait (backpressure).
const WRITE_QUEUE: usize = 64;
/// The most batches the writer folds into one transaction.
const MAX_GROUP: usize = 32;

/// How often the checkpointer runs.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// WAL size, in pages, above which the checkpointer restarts the WAL (holding writers briefly).
pub const WAL_RESTART_PAGES: i64 = 16 * 1024;

/// How hard SQLite flushes commits to disk; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Synchronous {
    /// Survives the process dying; an OS crash may roll back the last commits.
    #[default]
    Normal,
    /// fsync on every commit: survives OS crashes and power loss too.
    Full,
}

/// Where and how to open the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file; created with its directory if missing.
    pub path: PathBuf,
    /// Commit durability.
    pub synchronous: Synchronous,
    /// Read connections (concurrent history reads).
    pub readers: usize,
}

impl SqliteConfig {
    /// Defaults for `path`: `synchronous=NORMAL`, four readers.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Normal,
            readers: 4,
        }
    }
}

/// One batch for the writer thread, with the channel its caller waits on.
struct WriteJob {
    /// `(conversation, columns)` of each record, converted (and range-checked) by the caller.
    rows: Vec<(String, RecordColumns)>,
    watermark: Option<Watermark>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The SQLite [`HistoryStore`]. Cheap to share behind an `Arc`; dropping the last handle stops the
/// writer thread after it finished the queued batches.
pub struct SqliteStore {
    /// Bounded queue to the writer thread; its capacity is the write backpressure. `None` for a
    /// store opened with [`SqliteStore::open_for_reads`].
    writer: Option<mpsc::Sender<WriteJob>>,
    /// Idle read connections; a permit of `read_permits` guarantees one is there.
    readers: Arc<Mutex<Vec<Connection>>>,
    /// One permit per read connection.
    read_permits: Arc<Semaphore>,
    /// Dropping it tells the checkpointer thread to run a last checkpoint and exit. `None` when
    /// this process only reads: checkpoints are the writing process's job.
    _checkpointer: Option<std_mpsc::Sender<()>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database, migrates its schema, and starts the writer thread.
    pub async fn open(config: SqliteConfig) -> Result<Self, StoreError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config))
            .await
            .map_err(|_| StoreError::WorkerGone("SQLite open"))?
    }

    /// Opens the database for history reads only: read connections, but no writer thread and no
    /// checkpointer, so a gateway sharing the file with a persister never competes for the write
    /// lock or runs checkpoints. [`write_batch`](HistoryStore::write_batch) fails with
    /// [`StoreError::ReadOnly`].
    ///
    /// The file is created and migrated if needed (one short-lived write connection), so a gateway
    /// may start before the first persister. Checkpoints are the persister's job: without one
    /// running, the WAL only grows while something writes, which is exactly when a persister runs.
    pub async fn open_for_reads(config: SqliteConfig) -> Result<Self, StoreError> {
        tokio::task::spawn_blocking(move || Self::open_readers_blocking(config))
            .await
            .map_err(|_| StoreError::WorkerGone("SQLite open"))?
    }

    fn open_readers_blocking(config: SqliteConfig) -> Result<Self, StoreError> {
        let setup = open_and_migrate(&config)?;
        let readers = open_readers(&config)?;
        // Closed only once the readers hold the file open, so it is not the last connection and
        // does not checkpoint or remove the WAL on the way out.
        drop(setup);
        Ok(Self {
            writer: None,
            read_permits: Arc::new(Semaphore::new(readers.len())),
            readers: Arc::new(Mutex::new(readers)),
            _checkpointer: None,
        })
    }

    fn open_blocking(config: SqliteConfig) -> Result<Self, StoreError> {
        let path_str = config.path.display().to_string();
        let open_err = |source| StoreError::SqliteOpen {
            path: path_str.clone(),
            source,
        };
        let writer = open_and_migrate(&config)?;
        writer
            .execute_batch(&format!(
                "PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA temp_store = MEMORY;"
            ))
            .map_err(open_err)?;
        let readers = open_readers(&config)?;
        let sync = synchronous_pragma(config.synchronous);

        let checkpoint_conn = Connection::open(&config.path).map_err(open_err)?;
        checkpoint_conn
            .execute_batch(&format!(
                "PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 5000; \
                 PRAGMA wal_autocheckpoint = 0; \
                 PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES};"
            ))
            .map_err(open_err)?;
        let (checkpointer, stop) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stop))
            .map_err(|source| StoreError::Io {
                path: path_str.clone(),
                source,
            })?;

        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(writer, rx))
            .map_err(|source| StoreError::Io {
                path: path_str.clone(),
                source,
            })?;
        Ok(Self {
            writer: Some(tx),
            read_permits: Arc::new(Semaphore::new(readers.len())),
            readers: Arc::new(Mutex::new(readers)),
            _checkpointer: Some(checkpointer),
        })
    }

    /// Runs `f` on an idle read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.read_permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::WorkerGone("SQLite reader pool"))?;
        let pool = Arc::clone(&self.readers);
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
}

fn synchronous_pragma(s: Synchronous) -> &'static str {
    match s {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    }
}

/// Opens a write connection in WAL mode (creating the file and its directory if missing) and
/// brings the schema up to date.
fn open_and_migrate(config: &SqliteConfig) -> Result<Connection, StoreError> {
    let path_str = config.path.display().to_string();
    if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let open_err = |source| StoreError::SqliteOpen {
        path: path_str.clone(),
        source,
    };
    let mut conn = Connection::open(&config.path).map_err(open_err)?;
    let sync = synchronous_pragma(config.synchronous);
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; \
         PRAGMA busy_timeout = 5000; PRAGMA wal_autocheckpoint = 0;"
    ))
    .map_err(open_err)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// The read connections of the pool (at least one).
fn open_readers(config: &SqliteConfig) -> Result<Vec<Connection>, StoreError> {
    let open_err = |source| StoreError::SqliteOpen {
        path: config.path.display().to_string(),
        source,
    };
    (0..config.readers.max(1))
        .map(|_| {
            let conn = Connection::open_with_flags(
                &config.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(open_err)?;
            conn.execute_batch(&format!(
                "PRAGMA busy_timeout = 5000; PRAGMA cache_size = -{READER_CACHE_KIB}; \
                 PRAGMA mmap_size = {READER_MMAP_BYTES};"
            ))
            .map_err(open_err)?;
            Ok(conn)
        })
        .collect()
}

/// Brings the schema to the newest version, one transaction per migration.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let sql = |op| move |source| StoreError::Sqlite { op, source };
    let supported = MIGRATIONS.len() as i64;
    loop {
        // IMMEDIATE takes the write lock before reading the version, so two processes opening a
        // fresh file at once (a gateway and a persister) migrate one after the other.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql("starting migration"))?;
        let found: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("reading user_version"))?;
        if found > supported {
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        let Some(migration) = MIGRATIONS.get(found.max(0) as usize) else {
            return Ok(());
        };
        tx.execute_batch(migration)
            .map_err(sql("migrating schema"))?;
        tx.pragma_update(None, "user_version", found + 1)
            .map_err(sql("setting user_version"))?;
        tx.commit().map_err(sql("committing migration"))?;
        tracing::info!(version = found + 1, "migrated history schema");
    }
}

/// The writer thread: group-commits queued jobs until every sender is dropped.
fn write_loop(mut conn: Connection, mut rx: mpsc::Receiver<WriteJob>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let result = commit_group(&mut conn, &group);
        for job in group {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Sqlite {
                    op: "writing a batch",
                    source: clone_sqlite_error(e),
                }),
            };
            // The caller may have given up (cancelled); its batch is committed or not either way.
            let _ = job.done.send(answer);
        }
    }
}

/// The checkpointer thread: a passive checkpoint every [`CHECKPOINT_EVERY`] until the store drops.
fn checkpoint_loop(conn: Connection, stop: std_mpsc::Receiver<()>) {
    loop {
        let last = matches!(
            stop.recv_timeout(CHECKPOINT_EVERY),
            Err(std_mpsc::RecvTimeoutError::Disconnected)
        );
        // (busy, WAL pages, pages copied)
        let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match passive {
            Ok((_, wal_pages, _)) if wal_pages > WAL_RESTART_PAGES || last => {
                if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(RESTART);") {
                    tracing::warn!(error = %e, "restarting the SQLite WAL failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed"),
        }
        if last {
            return;
        }
    }
}

fn commit_group(conn: &mut Connection, group: &[WriteJob]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(INSERT_MESSAGE)?;
        let mut raise = tx.prepare_cached(RAISE_WATERMARK)?;
        for job in group {
            for (conv, c) in &job.rows {
                insert.execute(params![
                    conv,
                    c.seq,
                    c.id,
                    c.sender,
                    c.client_id,
                    c.ts,
                    c.body
                ])?;
            }
            if let Some(w) = job.watermark {
                raise.execute(params![i64::from(w.partition), bound_to_i64(w.seq)])?;
            }
        }
    }
    tx.commit()
}

/// rusqlite errors are not `Clone`; every caller of a failed group gets an equivalent one.
fn clone_sqlite_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            rusqlite::Error::SqliteFailure(*code, msg.clone())
        }
        other => rusqlite::Error::ToSqlConversionFailure(other.to_string().into()),
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
        let rows = records
            .iter()
            .map(|r| Ok((r.msg.conv.to_string(), record_columns(r)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (done, answer) = oneshot::channel();
        let job = WriteJob {
            rows,
            watermark,
            done,
        };
        writer
            .send(job)
            .await
            .map_err(|_| StoreError::WorkerGone("SQLite writer"))?;
        answer
            .await
            .map_err(|_| StoreError::WorkerGone("SQLite writer"))?
    }

    async fn page(&self, conv: &ConvId, query: PageQuery) -> Result<Vec<StoredRecord>, StoreError> {
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

    async fn watermark(&self, partition: u16) -> Result<u64, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_openers_of_a_fresh_file_both_succeed() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("h.db");
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || {
                        let mut conn = Connection::open(&path)?;
                        conn.busy_timeout(std::time::Duration::from_secs(5))?;
                        migrate(&mut conn).map_err(|e| match e {
                            StoreError::Sqlite { source, .. } => source,
                            other => panic!("{other}"),
                        })
                    })
                })
                .collect();
            for o in openers {
                o.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn migrations_are_idempotent_and_refuse_newer_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }

    #[test]
    fn v2_keeps_v1_rows_and_their_uniqueness() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("h.db")).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(INSERT_MESSAGE, params!["c", 5, "i", "u", "k", 1, "b"])
            .unwrap();
        migrate(&mut conn).unwrap();
        let again = conn
            .execute(INSERT_MESSAGE, params!["c", 5, "i", "u", "k", 1, "b"])
            .unwrap();
        assert_eq!(again, 0, "a redelivered row is ignored after the migration");
        let body: String = conn
            .query_row(PAGE_DESC, params!["c", 0, i64::MAX, 10], |r| r.get(5))
            .unwrap();
        assert_eq!(body, "b");
        let plan: String = conn
            .query_row(
                &format!("EXPLAIN QUERY PLAN {PAGE_DESC}"),
                params!["c", 0, i64::MAX, 10],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("messages_by_conv"), "{plan}");
    }
}
