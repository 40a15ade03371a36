//! Where and how to open the SQLite store: its file, its commit durability, its read connections.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How long a connection waits for a lock another connection holds before it fails with
/// "database is locked".
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Opens a connection to `path` that waits up to [`BUSY_TIMEOUT`] for locks other connections
/// hold, from its first statement on.
pub(super) fn connect(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// The `PRAGMA synchronous` value of `s`.
pub(super) fn synchronous_pragma(s: Synchronous) -> &'static str {
    match s {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    }
}
