//! The SQLite schema, its migrations, and the version check of each role.
//!
//! `PRAGMA user_version` counts the migrations applied. The writer applies the missing ones
//! ([`migrate`]); a reader only checks that the file is at the version it reads
//! ([`check_readable`]). See [`crate::schema`] for why the roles differ.

use rusqlite::Connection;

use crate::schema::{check_readable as version_readable, plan_migrations};
use crate::store::StoreError;

/// Schema migrations, applied in order; `PRAGMA user_version` counts the ones applied. Append only.
pub(super) const MIGRATIONS: &[&str] = &[
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

/// The schema version this build writes and reads.
pub(super) fn supported() -> i64 {
    MIGRATIONS.len() as i64
}

/// The file's schema version (`PRAGMA user_version`; 0 for a fresh or empty file).
fn user_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// The writer's part: brings the schema to the newest version, one transaction per migration.
/// Refuses a file newer than this build ([`StoreError::SchemaTooNew`]).
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let sql = |op| move |source| StoreError::Sqlite { op, source };
    let store = conn.path().unwrap_or("(in memory)").to_string();
    loop {
        // IMMEDIATE takes the write lock before reading the version, so two processes opening a
        // fresh file at once (two persisters) migrate one after the other.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql("starting migration"))?;
        let found = user_version(&tx).map_err(sql("reading user_version"))?;
        let Some(next) = plan_migrations(&store, found, supported())?.next() else {
            return Ok(());
        };
        tx.execute_batch(MIGRATIONS[next])
            .map_err(sql("migrating schema"))?;
        tx.pragma_update(None, "user_version", found + 1)
            .map_err(sql("setting user_version"))?;
        tx.commit().map_err(sql("committing migration"))?;
        tracing::info!(version = found + 1, "migrated history schema");
    }
}

/// The reader's part: whether the file is at exactly the version this build reads; never
/// changes the file.
pub(super) fn check_readable(conn: &Connection, store: &str) -> Result<(), StoreError> {
    let found = user_version(conn).map_err(|source| StoreError::Sqlite {
        op: "reading user_version",
        source,
    })?;
    version_readable(store, found, supported())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::read::PAGE_DESC;
    use crate::sqlite::write::INSERT_MESSAGE;
    use rusqlite::params;

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

    #[test]
    fn a_reader_checks_the_version_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("h.db")).unwrap();
        assert!(matches!(
            check_readable(&conn, "h.db"),
            Err(StoreError::SchemaMissing { .. })
        ));
        assert_eq!(
            user_version(&conn).unwrap(),
            0,
            "the reader created nothing"
        );
        migrate(&mut conn).unwrap();
        check_readable(&conn, "h.db").unwrap();
    }
}
