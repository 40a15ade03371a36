//! The history store: where the persister puts messages and where the gateway reads history pages.
//!
//! [`HistoryStore`] is the contract; [`crate::sqlite`] and [`crate::scylla`] implement it. The
//! contract test suite (`tests/integration/contract.rs`) runs the same checks against both.

use async_trait::async_trait;
use chatfabric_nats::wire::{StoredMessage, Via};
use chatfabric_nats::{ConvId, UserId};

/// The largest page a store returns, whatever the caller asks for: bounds the memory and the time
/// one history request may take.
pub const MAX_PAGE_LIMIT: usize = 1000;

/// One message together with its place in its partition stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The JetStream stream sequence of the message in its conversation's partition stream
    /// (`CHAT_MSGS_<part>`). A conversation lives in exactly one stream, so `(conv, seq)` is unique.
    /// Always at least 1 and below 2^63.
    pub seq: u64,
    /// The message as published.
    pub msg: StoredMessage,
}

/// Which page of a conversation's history to read. Both bounds are exclusive stream sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageQuery {
    /// Only messages with `seq < before`. `None`: no upper bound (start at the newest message).
    pub before: Option<u64>,
    /// Only messages with `seq > after`. `None`: no lower bound.
    pub after: Option<u64>,
    /// At most this many messages (capped at [`MAX_PAGE_LIMIT`]).
    pub limit: usize,
}

impl PageQuery {
    /// The newest `limit` messages.
    pub fn latest(limit: usize) -> Self {
        Self {
            before: None,
            after: None,
            limit,
        }
    }

    /// The `limit` messages just below `before` (scrolling back).
    pub fn before(before: u64, limit: usize) -> Self {
        Self {
            before: Some(before),
            after: None,
            limit,
        }
    }

    /// The `limit` messages just above `after` (catching up from a cursor).
    pub fn after(after: u64, limit: usize) -> Self {
        Self {
            before: None,
            after: Some(after),
            limit,
        }
    }

    /// The effective limit: the caller's, capped at [`MAX_PAGE_LIMIT`].
    pub fn capped_limit(&self) -> usize {
        self.limit.min(MAX_PAGE_LIMIT)
    }

    /// Whether the page is anchored at `after` (the oldest messages above it) rather than at
    /// `before` or at the newest message.
    pub fn anchored_after(&self) -> bool {
        self.before.is_none() && self.after.is_some()
    }
}

/// How far a partition stream is stored: every message of stream `CHAT_MSGS_<partition>` with a
/// sequence at or below `seq` is either in the store or was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// The partition (stream `CHAT_MSGS_<partition>`).
    pub partition: u16,
    /// The highest sequence at or below which the store is complete.
    pub seq: u64,
}

/// Where conversation history is kept.
///
/// # Contract
///
/// - **Idempotent writes.** Rows are keyed by `(conversation, stream sequence)`. Writing a record
///   that is already stored (a JetStream redelivery, two persisters racing) stores it once. A
///   record's content never changes for a given key (JetStream messages are immutable), so which
///   copy wins does not matter.
/// - **Durability.** A write counts once [`write_batch`](Self::write_batch) returned `Ok`: the
///   batch is committed (SQLite: the transaction is in the WAL) or acknowledged by the configured
///   consistency level (ScyllaDB). Only then does the persister ack the messages to JetStream.
///   On `Err` any part of the batch may or may not be stored; the caller retries the whole batch,
///   which idempotency makes safe.
/// - **Watermarks.** A watermark passed to `write_batch` is stored only if every record of the
///   batch is, and never moves backwards (the store keeps the maximum). The caller passes only
///   sequences below which everything was already stored ([`Watermark`]), so a reader may serve
///   `seq <= watermark(part)` from the store alone and must read JetStream above it.
/// - **Pages.** [`page`](Self::page) returns messages with `after < seq < before`, newest first
///   (descending `seq`), at most `limit` ([`MAX_PAGE_LIMIT`] at most). When only `after` is given
///   the page holds the messages *just above* `after` (the oldest ones), still newest first, so
///   a reader catching up walks forward with `after = page[0].seq`. Otherwise the page holds the
///   newest messages below `before`, and a reader scrolling back continues with
///   `before = page.last().seq`. Either walk visits every stored message exactly once, in order.
/// - **Isolation.** Pages of one conversation never contain another conversation's messages.
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Stores `records` and, when given, raises the partition's watermark, atomically where the
    /// backend allows (SQLite: one transaction) and otherwise watermark last (ScyllaDB).
    async fn write_batch(
        &self,
        records: &[StoredRecord],
        watermark: Option<Watermark>,
    ) -> Result<(), StoreError>;

    /// One page of `conv`'s history; see the trait's contract for the order and the anchoring.
    async fn page(&self, conv: &ConvId, query: PageQuery) -> Result<Vec<StoredRecord>, StoreError>;

    /// The stored watermark of `partition`; 0 when nothing was recorded yet.
    async fn watermark(&self, partition: u16) -> Result<u64, StoreError>;
}

/// Why a history store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite database could not be opened or prepared.
    #[error(
        "opening SQLite database {path}: {source} (check that the directory exists and is \
         writable, and that the file is a SQLite database)"
    )]
    SqliteOpen {
        /// The database file.
        path: String,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A SQLite statement failed.
    #[error(
        "SQLite {op}: {source} (check free disk space, file permissions, and that no other \
         program holds a write lock on the database)"
    )]
    Sqlite {
        /// What we were doing.
        op: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The store was written by a newer chatfabric with a schema this version does not know.
    #[error(
        "history schema version {found} of {store} is newer than this build supports \
         ({supported}); upgrade chatfabric or point it at another store"
    )]
    SchemaTooNew {
        /// The SQLite file or the ScyllaDB keyspace.
        store: String,
        /// The store's schema version (SQLite: `PRAGMA user_version`).
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A reader found no history schema: no writer (`chatfabric persister`) has created it yet.
    #[error(
        "{store} holds no history schema yet; the persister creates it when it starts (check \
         that the persister runs and points at the same store)"
    )]
    SchemaMissing {
        /// The SQLite file or the ScyllaDB keyspace.
        store: String,
    },
    /// A reader found an older schema than it reads: the writer has not migrated it yet.
    #[error(
        "history schema version {found} of {store} is older than this build reads ({expected}); \
         the persister of this version migrates it when it starts (upgrade the persister first)"
    )]
    SchemaOutdated {
        /// The SQLite file or the ScyllaDB keyspace.
        store: String,
        /// The store's schema version.
        found: i64,
        /// The version this build reads.
        expected: i64,
    },
    /// A write to a store opened for reads only
    /// ([`open_store_for_reads`](crate::open_store_for_reads)): a bug in the caller, which should
    /// have opened the store with [`open_store`](crate::open_store).
    #[error("the history store was opened for reads only; writes go through the persister")]
    ReadOnly,
    /// The store's worker thread or task is gone (it panicked or the store was dropped).
    #[error(
        "the {0} worker stopped; the store must be reopened (see earlier log lines for a panic)"
    )]
    WorkerGone(&'static str),
    /// Connecting to ScyllaDB failed.
    #[error(
        "connecting to ScyllaDB at {nodes}: {source} (check --scylla-uri and that the nodes \
         accept CQL connections on that port)"
    )]
    ScyllaConnect {
        /// The contact points.
        nodes: String,
        /// What the driver said.
        #[source]
        source: Box<scylla::errors::NewSessionError>,
    },
    /// Preparing a CQL statement failed (usually the schema is missing or different).
    #[error("preparing CQL `{cql}`: {source} (was the keyspace created by another version?)")]
    ScyllaPrepare {
        /// The statement.
        cql: String,
        /// What the driver said.
        #[source]
        source: Box<scylla::errors::PrepareError>,
    },
    /// Executing a CQL statement failed.
    #[error(
        "ScyllaDB {op}: {source} (check that enough replicas are up for the configured \
         consistency level)"
    )]
    ScyllaExecute {
        /// What we were doing.
        op: &'static str,
        /// What the driver said.
        #[source]
        source: Box<scylla::errors::ExecutionError>,
    },
    /// A ScyllaDB result could not be read.
    #[error(
        "reading ScyllaDB result of {op}: {detail} (does the table have the expected columns?)"
    )]
    ScyllaResult {
        /// What we were doing.
        op: &'static str,
        /// The driver's error, as text.
        detail: String,
    },
    /// A stored row does not hold a valid message (edited by hand, or written by a buggy version).
    #[error("stored message {conv}/{seq} is invalid: {reason}; inspect or delete that row")]
    Corrupt {
        /// The conversation.
        conv: String,
        /// The sequence.
        seq: i64,
        /// What is wrong.
        reason: String,
    },
    /// A record cannot be stored: a number does not fit the store's signed 64-bit columns.
    #[error(
        "record at sequence {seq} cannot be stored: {reason} (stream sequences and timestamps \
         must be below 2^63; did the record come from a chatfabric stream?)"
    )]
    InvalidRecord {
        /// The record's sequence.
        seq: u64,
        /// What is out of range.
        reason: &'static str,
    },
    /// Creating the database's directory failed.
    #[error("creating directory {path}: {source} (check permissions of the parent directory)")]
    Io {
        /// The directory.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The store configuration is unusable.
    #[error("invalid history store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether the SQLite file was locked by another program (a backup, `sqlite3`) for longer
    /// than the busy timeout: worth retrying, unlike the other open failures.
    pub fn is_locked(&self) -> bool {
        match self {
            Self::SqliteOpen { source, .. } | Self::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }
}

/// A batch as `(conversation, columns)` rows, each range-checked ([`record_columns`]).
pub(crate) fn batch_rows(
    records: &[StoredRecord],
) -> Result<Vec<(&ConvId, RecordColumns)>, StoreError> {
    records
        .iter()
        .map(|r| Ok((&r.msg.conv, record_columns(r)?)))
        .collect()
}

/// A record as the columns both backends store, range-checked for their signed 64-bit integers.
pub(crate) fn record_columns(record: &StoredRecord) -> Result<RecordColumns, StoreError> {
    let seq =
        i64::try_from(record.seq)
            .ok()
            .filter(|s| *s > 0)
            .ok_or(StoreError::InvalidRecord {
                seq: record.seq,
                reason: "sequence must be 1..2^63",
            })?;
    let ts = i64::try_from(record.msg.ts).map_err(|_| StoreError::InvalidRecord {
        seq: record.seq,
        reason: "timestamp out of range",
    })?;
    let m = &record.msg;
    Ok(RecordColumns {
        seq,
        id: m.id.clone(),
        sender: m.sender.to_string(),
        client_id: stored_client_id(&m.client_id, m.via),
        ts,
        body: m.body.clone(),
    })
}

/// The `client_id` column: the client id, and for a message posted through the server API its
/// `via` after a space. Client ids never hold a space, so the column reads back unambiguously,
/// and rows written before `via` existed read as they were (no schema change for either backend).
fn stored_client_id(client_id: &str, via: Option<Via>) -> String {
    match via {
        None => client_id.to_string(),
        Some(via) => format!("{client_id} {}", via.as_str()),
    }
}

/// Converts an exclusive page bound to the signed column type, saturating (`u64::MAX` as an upper
/// bound means "no bound").
pub(crate) fn bound_to_i64(bound: u64) -> i64 {
    i64::try_from(bound).unwrap_or(i64::MAX)
}

/// Rebuilds a record from stored columns, validating what the database cannot.
pub(crate) fn record_from_columns(
    conv: &ConvId,
    columns: RecordColumns,
) -> Result<StoredRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        conv: conv.to_string(),
        seq: columns.seq,
        reason,
    };
    let seq = u64::try_from(columns.seq)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| corrupt("sequence is not positive".into()))?;
    let ts = u64::try_from(columns.ts).map_err(|_| corrupt("timestamp is negative".into()))?;
    let sender = UserId::new(columns.sender).map_err(|e| corrupt(format!("sender: {e}")))?;
    let (client_id, via) = match columns.client_id.split_once(' ') {
        None => (columns.client_id, None),
        Some((id, via)) => {
            let via = Via::parse(via).ok_or_else(|| corrupt(format!("via: {via:?}")))?;
            (id.to_string(), Some(via))
        }
    };
    Ok(StoredRecord {
        seq,
        msg: StoredMessage {
            id: columns.id,
            conv: conv.clone(),
            sender,
            client_id,
            ts,
            body: columns.body,
            via,
        },
    })
}

/// A message row as both backends store it (the conversation is the row's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordColumns {
    pub(crate) seq: i64,
    pub(crate) id: String,
    pub(crate) sender: String,
    pub(crate) client_id: String,
    pub(crate) ts: i64,
    pub(crate) body: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_reads_back_from_the_client_id_column() {
        let conv = ConvId::new("c").unwrap();
        for via in [None, Some(Via::Backend), Some(Via::Service)] {
            let record = StoredRecord {
                seq: 1,
                msg: StoredMessage {
                    id: "i".into(),
                    conv: conv.clone(),
                    sender: UserId::new("alice").unwrap(),
                    client_id: "k:1".into(),
                    ts: 1,
                    body: "hi".into(),
                    via,
                },
            };
            let columns = record_columns(&record).unwrap();
            assert_eq!(record_from_columns(&conv, columns).unwrap(), record);
        }
        let mut columns = record_columns(&StoredRecord {
            seq: 1,
            msg: StoredMessage {
                id: "i".into(),
                conv: conv.clone(),
                sender: UserId::new("alice").unwrap(),
                client_id: "k".into(),
                ts: 1,
                body: "hi".into(),
                via: None,
            },
        })
        .unwrap();
        columns.client_id = "k elsewhere".into();
        assert!(record_from_columns(&conv, columns).is_err());
    }
}
