//! The clustered history backend: ScyllaDB (or Cassandra) through the `scylla` driver.
//!
//! The schema and the reasons for its bucketing are in [`cql`]. Writes are plain CQL upserts, so
//! rewriting a message (a redelivery) is idempotent. A batch is written as concurrent single-row
//! statements (at most [`ScyllaConfig::write_concurrency`] in flight), bucket index first, then the
//! messages, and the watermark only after every message was acknowledged at the configured
//! consistency: a reader that trusts the watermark never finds a hole below it, provided it reads
//! at a consistency that overlaps the writes' (e.g. `LOCAL_QUORUM` for both).
//!
//! The writer ([`ScyllaStore::connect`]) creates the keyspace and migrates its schema, recording
//! the version in the `schema_version` table; a reader ([`ScyllaStore::connect_for_reads`]) only
//! checks that version (see [`crate::schema`]).

pub mod cql;

use std::collections::BTreeSet;

use async_trait::async_trait;
use chatfabric_nats::ConvId;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;

use crate::schema::{check_readable, plan_migrations};
use crate::store::{
    batch_rows, bound_to_i64, record_from_columns, HistoryStore, PageQuery, RecordColumns,
    StoreError, StoredRecord, Watermark,
};
use cql::{bucket_of, seq_range, Replication, Statements};

/// What executing one statement yields.
type Execution =
    Result<scylla::response::query_result::QueryResult, scylla::errors::ExecutionError>;

/// A message row as selected: `(seq, id, sender, client_id, ts, body)`.
type MessageRow = (i64, String, String, String, i64, String);

/// How to reach and lay out the ScyllaDB store.
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace holding the tables; created if missing. Letters, digits and `_`.
    pub keyspace: String,
    /// Replication of the keyspace when it is created (an existing keyspace is left as it is).
    pub replication: Replication,
    /// Consistency of every read and write. `LocalQuorum` (the default) makes a read see every
    /// acknowledged write with replication factor 3.
    pub consistency: Consistency,
    /// Statements in flight per `write_batch`.
    pub write_concurrency: usize,
}

impl ScyllaConfig {
    /// Defaults for `nodes`: keyspace `chatfabric`, replication factor 1, `LOCAL_QUORUM`.
    pub fn new(nodes: Vec<String>) -> Self {
        Self {
            nodes,
            keyspace: "chatfabric".into(),
            replication: Replication::Simple { factor: 1 },
            consistency: Consistency::LocalQuorum,
            write_concurrency: 64,
        }
    }
}

/// The prepared form of [`Statements`].
struct Prepared {
    insert_message: PreparedStatement,
    insert_bucket: PreparedStatement,
    buckets_desc: PreparedStatement,
    buckets_asc: PreparedStatement,
    page_desc: PreparedStatement,
    page_asc: PreparedStatement,
    insert_watermark: PreparedStatement,
    trim_watermarks: PreparedStatement,
    read_watermark: PreparedStatement,
}

/// The ScyllaDB [`HistoryStore`].
pub struct ScyllaStore {
    session: Session,
    statements: Prepared,
    write_concurrency: usize,
}

fn execute_err(op: &'static str) -> impl Fn(scylla::errors::ExecutionError) -> StoreError {
    move |source| StoreError::ScyllaExecute {
        op,
        source: Box::new(source),
    }
}

fn result_err<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::ScyllaResult {
        op,
        detail: e.to_string(),
    }
}

impl ScyllaStore {
    /// Connects as the store's writer (the persister): creates the keyspace and tables if
    /// missing, migrates them to this build's schema version and records it, then prepares the
    /// statements. Refuses a keyspace whose schema is newer ([`StoreError::SchemaTooNew`]).
    pub async fn connect(config: ScyllaConfig) -> Result<Self, StoreError> {
        let session = open_session(&config).await?;
        let ks = &config.keyspace;
        session
            .query_unpaged(cql::create_keyspace(ks, &config.replication), ())
            .await
            .map_err(execute_err("creating the keyspace"))?;
        session
            .query_unpaged(cql::create_schema_version_table(ks), ())
            .await
            .map_err(execute_err("creating the schema version table"))?;
        // Every node knows the new table before the version is read and written through it.
        session
            .await_schema_agreement()
            .await
            .map_err(result_err("waiting for schema agreement"))?;
        let migrations = cql::migrations(ks);
        let found = schema_version(&session, ks).await?;
        for version in plan_migrations(ks, found, migrations.len() as i64)? {
            for statement in &migrations[version] {
                session
                    .query_unpaged(statement.as_str(), ())
                    .await
                    .map_err(execute_err("migrating the schema"))?;
            }
            let reached = i32::try_from(version + 1).unwrap_or(i32::MAX);
            session
                .query_unpaged(cql::write_schema_version(ks), (reached,))
                .await
                .map_err(execute_err("recording the schema version"))?;
            tracing::info!(keyspace = %ks, version = reached, "migrated history schema");
        }
        session
            .await_schema_agreement()
            .await
            .map_err(result_err("waiting for schema agreement"))?;
        Self::prepared(session, &config).await
    }

    /// Connects as a reader (the gateway): creates and migrates nothing, and reads only a
    /// keyspace at exactly this build's schema version; else [`StoreError::SchemaMissing`],
    /// [`StoreError::SchemaOutdated`] or [`StoreError::SchemaTooNew`].
    /// [`write_batch`](HistoryStore::write_batch) still works (the session could write); the
    /// gateway never calls it.
    pub async fn connect_for_reads(config: ScyllaConfig) -> Result<Self, StoreError> {
        let session = open_session(&config).await?;
        let ks = &config.keyspace;
        let found = schema_version(&session, ks).await?;
        check_readable(ks, found, cql::migrations(ks).len() as i64)?;
        Self::prepared(session, &config).await
    }

    /// Prepares every statement on `session`.
    async fn prepared(session: Session, config: &ScyllaConfig) -> Result<Self, StoreError> {
        let text = Statements::new(&config.keyspace);
        let prepare = |cql: String| {
            let session = &session;
            async move {
                let mut p = session.prepare(cql.as_str()).await.map_err(|source| {
                    StoreError::ScyllaPrepare {
                        cql,
                        source: Box::new(source),
                    }
                })?;
                p.set_consistency(config.consistency);
                // Every statement may be retried: upserts, reads, and a max-wins watermark.
                p.set_is_idempotent(true);
                Ok::<_, StoreError>(p)
            }
        };
        let statements = Prepared {
            insert_message: prepare(text.insert_message).await?,
            insert_bucket: prepare(text.insert_bucket).await?,
            buckets_desc: prepare(text.buckets_desc).await?,
            buckets_asc: prepare(text.buckets_asc).await?,
            page_desc: prepare(text.page_desc).await?,
            page_asc: prepare(text.page_asc).await?,
            insert_watermark: prepare(text.insert_watermark).await?,
            trim_watermarks: prepare(text.trim_watermarks).await?,
            read_watermark: prepare(text.read_watermark).await?,
        };
        Ok(Self {
            session,
            statements,
            write_concurrency: config.write_concurrency.max(1),
        })
    }

    /// Runs statements with at most `write_concurrency` in flight; the first error wins.
    async fn run_concurrently(
        &self,
        statements: Vec<BoxFuture<'_, Execution>>,
    ) -> Result<(), scylla::errors::ExecutionError> {
        futures::stream::iter(statements)
            .buffer_unordered(self.write_concurrency)
            .try_for_each(|_| futures::future::ready(Ok(())))
            .await
    }

    /// Reads up to `limit` rows of one bucket within `[lo, hi]`.
    async fn bucket_rows(
        &self,
        conv: &ConvId,
        bucket: i64,
        (lo, hi): (i64, i64),
        limit: usize,
        descending: bool,
    ) -> Result<Vec<RecordColumns>, StoreError> {
        let statement = if descending {
            &self.statements.page_desc
        } else {
            &self.statements.page_asc
        };
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let result = self
            .session
            .execute_unpaged(statement, (conv.as_str(), bucket, lo, hi, limit))
            .await
            .map_err(execute_err("reading a page"))?
            .into_rows_result()
            .map_err(result_err("reading a page"))?;
        let rows = result
            .rows::<MessageRow>()
            .map_err(result_err("reading a page"))?;
        rows.map(|row| row.map(columns).map_err(result_err("reading a page")))
            .collect()
    }
}

/// Checks the configuration and opens a session to the contact points.
async fn open_session(config: &ScyllaConfig) -> Result<Session, StoreError> {
    let ks = &config.keyspace;
    if !cql::valid_keyspace(ks) {
        return Err(StoreError::Config(format!(
            "keyspace {ks:?} must be 1-48 letters, digits or '_', starting with a letter"
        )));
    }
    if config.nodes.is_empty() {
        return Err(StoreError::Config(
            "no ScyllaDB contact points given".into(),
        ));
    }
    SessionBuilder::new()
        .known_nodes(&config.nodes)
        .build()
        .await
        .map_err(|source| StoreError::ScyllaConnect {
            nodes: config.nodes.join(","),
            source: Box::new(source),
        })
}

/// The schema version keyspace `ks` is at (0: no keyspace or no schema); see
/// [`cql::found_version`].
async fn schema_version(session: &Session, ks: &str) -> Result<i64, StoreError> {
    const OP: &str = "reading the schema version";
    // Unquoted CQL names are stored in lowercase.
    let tables: Vec<String> = session
        .query_unpaged(cql::LIST_TABLES, (ks.to_lowercase(),))
        .await
        .map_err(execute_err(OP))?
        .into_rows_result()
        .map_err(result_err(OP))?
        .rows::<(String,)>()
        .map_err(result_err(OP))?
        .map(|row| row.map(|(name,)| name).map_err(result_err(OP)))
        .collect::<Result<_, _>>()?;
    let row = if tables.iter().any(|t| t == "schema_version") {
        session
            .query_unpaged(cql::read_schema_version(ks), ())
            .await
            .map_err(execute_err(OP))?
            .into_rows_result()
            .map_err(result_err(OP))?
            .maybe_first_row::<(i32,)>()
            .map_err(result_err(OP))?
            .map(|(version,)| version)
    } else {
        None
    };
    Ok(cql::found_version(&tables, row))
}

/// Maps a selected row to the columns both backends share.
fn columns((seq, id, sender, client_id, ts, body): MessageRow) -> RecordColumns {
    RecordColumns {
        seq,
        id,
        sender,
        client_id,
        ts,
        body,
    }
}

#[async_trait]
impl HistoryStore for ScyllaStore {
    async fn write_batch(
        &self,
        records: &[StoredRecord],
        watermark: Option<Watermark>,
    ) -> Result<(), StoreError> {
        let rows: Vec<_> = batch_rows(records)?
            .into_iter()
            .map(|(conv, columns)| (conv.as_str(), columns))
            .collect();
        let buckets: BTreeSet<(&str, i64)> = rows
            .iter()
            .map(|(conv, c)| (*conv, bucket_of(c.seq as u64)))
            .collect();
        let s = &self.statements;
        // The bucket index first: a message row is only found through its bucket's entry.
        let index: Vec<_> = buckets
            .into_iter()
            .map(|(conv, bucket)| -> BoxFuture<'_, Execution> {
                Box::pin(
                    self.session
                        .execute_unpaged(&s.insert_bucket, (conv, bucket)),
                )
            })
            .collect();
        self.run_concurrently(index)
            .await
            .map_err(execute_err("writing the bucket index"))?;
        let inserts: Vec<_> = rows
            .iter()
            .map(|(conv, c)| -> BoxFuture<'_, Execution> {
                let values = (
                    *conv,
                    bucket_of(c.seq as u64),
                    c.seq,
                    c.id.as_str(),
                    c.sender.as_str(),
                    c.client_id.as_str(),
                    c.ts,
                    c.body.as_str(),
                );
                Box::pin(self.session.execute_unpaged(&s.insert_message, values))
            })
            .collect();
        self.run_concurrently(inserts)
            .await
            .map_err(execute_err("writing messages"))?;
        if let Some(w) = watermark {
            let values = (i32::from(w.partition), bound_to_i64(w.seq));
            self.session
                .execute_unpaged(&s.insert_watermark, values)
                .await
                .map_err(execute_err("writing the watermark"))?;
            // Only housekeeping: a failed trim leaves extra rows that `LIMIT 1` skips.
            if let Err(e) = self
                .session
                .execute_unpaged(&s.trim_watermarks, values)
                .await
            {
                tracing::debug!(error = %e, "trimming old watermark rows failed");
            }
        }
        Ok(())
    }

    async fn page(&self, conv: &ConvId, query: PageQuery) -> Result<Vec<StoredRecord>, StoreError> {
        let limit = query.capped_limit();
        let Some((lo, hi)) = seq_range(query.after, query.before) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let descending = !query.anchored_after();
        let bucket_statement = if descending {
            &self.statements.buckets_desc
        } else {
            &self.statements.buckets_asc
        };
        let mut buckets = self
            .session
            .execute_iter(
                bucket_statement.clone(),
                (conv.as_str(), bucket_of(lo), bucket_of(hi)),
            )
            .await
            .map_err(result_err("listing buckets"))?
            .rows_stream::<(i64,)>()
            .map_err(result_err("listing buckets"))?;
        let range = (bound_to_i64(lo), bound_to_i64(hi));
        let mut page = Vec::with_capacity(limit);
        while page.len() < limit {
            let Some(next) = buckets.next().await else {
                break;
            };
            let (bucket,) = next.map_err(result_err("listing buckets"))?;
            for row in self
                .bucket_rows(conv, bucket, range, limit - page.len(), descending)
                .await?
            {
                page.push(record_from_columns(conv, row)?);
            }
        }
        if !descending {
            page.reverse();
        }
        Ok(page)
    }

    async fn watermark(&self, partition: u16) -> Result<u64, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.statements.read_watermark, (i32::from(partition),))
            .await
            .map_err(execute_err("reading the watermark"))?
            .into_rows_result()
            .map_err(result_err("reading the watermark"))?
            .maybe_first_row::<(i64,)>()
            .map_err(result_err("reading the watermark"))?;
        Ok(row.and_then(|(seq,)| u64::try_from(seq).ok()).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record_columns;

    #[test]
    fn rows_map_to_records() {
        let conv = ConvId::new("room").unwrap();
        let row: MessageRow = (
            42,
            "id1".into(),
            "alice".into(),
            "c1".into(),
            1_700_000_000_000,
            "hi".into(),
        );
        let record = record_from_columns(&conv, columns(row)).unwrap();
        assert_eq!(record.seq, 42);
        assert_eq!(record.msg.conv, conv);
        assert_eq!(record.msg.sender.as_str(), "alice");
        assert_eq!(record.msg.ts, 1_700_000_000_000);
        assert_eq!(record_columns(&record).unwrap().body, "hi");

        let bad_sender: MessageRow = (1, "i".into(), "a.b".into(), "c".into(), 1, "b".into());
        assert!(matches!(
            record_from_columns(&conv, columns(bad_sender)),
            Err(StoreError::Corrupt { .. })
        ));
        let negative: MessageRow = (-1, "i".into(), "a".into(), "c".into(), 1, "b".into());
        assert!(record_from_columns(&conv, columns(negative)).is_err());
    }
}
