//! The SQLite writer: the one write connection on its own thread with group commit, and the
//! checkpointer thread. Only the writer role ([`SqliteStore::open`](super::SqliteStore::open))
//! starts them; see the module docs of [`crate::sqlite`] for why they are threads.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use super::config::{connect, synchronous_pragma, SqliteConfig, BUSY_TIMEOUT};
use super::schema::migrate;
use crate::store::{batch_rows, bound_to_i64, RecordColumns, StoreError, StoredRecord, Watermark};

pub(super) const INSERT_MESSAGE: &str =
    "INSERT OR IGNORE INTO messages (conv, seq, id, sender, client_id, ts, body) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const RAISE_WATERMARK: &str = "INSERT INTO watermarks (partition, seq) VALUES (?1, ?2) \
     ON CONFLICT (partition) DO UPDATE SET seq = max(seq, excluded.seq)";

/// Page cache of the writer connection, in KiB. The index leaves every commit touches (one per
/// conversation written) stay in memory instead of being re-read from the file (SQLite's default
/// is 2 MiB, which a busy store outgrows at once).
const WRITER_CACHE_KIB: i64 = 64 * 1024;
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

/// One batch for the writer thread, with the channel its caller waits on.
struct WriteJob {
    /// `(conversation, columns)` of each record, converted (and range-checked) by the caller.
    rows: Vec<(String, RecordColumns)>,
    watermark: Option<Watermark>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The handles of the writer's threads. Dropping it lets the writer finish the queued batches
/// and the checkpointer run a last checkpoint, then both exit.
pub(super) struct Writer {
    /// Bounded queue to the writer thread; its capacity is the write backpressure.
    jobs: mpsc::Sender<WriteJob>,
    /// Dropping it tells the checkpointer thread to run a last checkpoint and exit.
    _checkpointer: std_mpsc::Sender<()>,
}

impl Writer {
    /// Opens the write connection (creating the file and its directory if missing), migrates the
    /// schema, and starts the writer and checkpointer threads. Blocking.
    pub(super) fn start(config: &SqliteConfig) -> Result<Self, StoreError> {
        let path_str = config.path.display().to_string();
        let open_err = |source| StoreError::SqliteOpen {
            path: path_str.clone(),
            source,
        };
        let writer = open_and_migrate(config)?;
        writer
            .execute_batch(&format!(
                "PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA temp_store = MEMORY;"
            ))
            .map_err(open_err)?;
        let sync = synchronous_pragma(config.synchronous);

        let checkpoint_conn = connect(&config.path, OpenFlags::default()).map_err(open_err)?;
        checkpoint_conn
            .execute_batch(&format!(
                "PRAGMA synchronous = {sync}; PRAGMA wal_autocheckpoint = 0; \
                 PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES};"
            ))
            .map_err(open_err)?;
        let (checkpointer, stop) = std_mpsc::channel();
        let thread_err = |source| StoreError::Io {
            path: path_str.clone(),
            source,
        };
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stop))
            .map_err(thread_err)?;

        let (jobs, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(writer, rx))
            .map_err(thread_err)?;
        Ok(Self {
            jobs,
            _checkpointer: checkpointer,
        })
    }

    /// Queues one batch and waits until the writer committed it (or failed to).
    pub(super) async fn write(
        &self,
        records: &[StoredRecord],
        watermark: Option<Watermark>,
    ) -> Result<(), StoreError> {
        let rows = batch_rows(records)?
            .into_iter()
            .map(|(conv, columns)| (conv.to_string(), columns))
            .collect();
        let (done, answer) = oneshot::channel();
        let job = WriteJob {
            rows,
            watermark,
            done,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::WorkerGone("SQLite writer"))?;
        answer
            .await
            .map_err(|_| StoreError::WorkerGone("SQLite writer"))?
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
    let mut conn = connect(&config.path, OpenFlags::default()).map_err(open_err)?;
    enter_wal(&conn).map_err(open_err)?;
    let sync = synchronous_pragma(config.synchronous);
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA wal_autocheckpoint = 0;"
    ))
    .map_err(open_err)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Switches `conn`'s file to WAL. The switch takes an exclusive lock, and when two connections
/// ask for it at once (two persisters starting on a fresh file) SQLite fails one of them at once
/// with "database is locked" instead of waiting out the busy timeout, so the switch is retried
/// for as long.
fn enter_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            done => return done,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Persisters started together on a fresh file (the chaos topology starts two) all open it,
    /// though only one at a time can switch it to WAL.
    #[test]
    fn writers_opening_a_fresh_file_at_once_all_succeed() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = SqliteConfig::new(dir.path().join("h.db"));
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    let config = config.clone();
                    std::thread::spawn(move || open_and_migrate(&config).map(drop))
                })
                .collect();
            for o in openers {
                o.join().expect("opener thread").expect("opens");
            }
        }
    }
}
