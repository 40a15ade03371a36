//! Where and how to open the SQLite store: its file, its commit durability, its read connections.

use std::path::PathBuf;

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

/// The `PRAGMA synchronous` value of `s`.
pub(super) fn synchronous_pragma(s: Synchronous) -> &'static str {
    match s {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    }
}
