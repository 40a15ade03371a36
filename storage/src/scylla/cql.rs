//! CQL text and bucket math of the ScyllaDB backend, kept apart from the driver so they are
//! unit-tested without a cluster.
//!
//! # Schema
//!
//! ```text
//! messages     ((conv, bucket), seq DESC)  one row per message
//! conv_buckets (conv, bucket DESC)         which buckets of a conversation hold messages
//! watermarks   (part, seq DESC)            stored watermarks; the newest row is the watermark
//! schema_version (component)               the schema version of the keyspace (one row)
//! ```
//!
//! **Schema versions** are counted like SQLite's `user_version`: [`migrations`] lists the CQL
//! of each version, and the writer records the version it reached in `schema_version`. A
//! keyspace with the version 1 tables but no row was created before versions were recorded, and
//! counts as version 1 ([`found_version`]).
//!
//! **Buckets are sequence ranges**, `bucket = seq >> BUCKET_BITS`, not time ranges: history is
//! paged by sequence (`before`/`after` cursors), and a cursor maps to its bucket with no lookup.
//! Time buckets would need the message's timestamp, and timestamps stamped by different gateways
//! are not monotonic in the sequence, so a time-bucketed walk could misorder messages near a
//! boundary. A bucket spans 2^16 stream sequences, so one partition holds at most 65 536 messages
//! (~20 MB), whatever the conversation's traffic.
//!
//! A quiet conversation in a busy stream has messages in few of the many buckets; `conv_buckets`
//! lists them, so a page reads only buckets that hold messages: the bucket list in order, then
//! each bucket's rows until the page is full.
//!
//! **Watermarks** are rows clustered by `seq DESC` and read with `LIMIT 1`: the maximum wins
//! without a lightweight transaction, whatever order concurrent persisters write in. Older rows
//! are trimmed with a range delete after each write.

/// Bits of a sequence below the bucket number.
pub const BUCKET_BITS: u32 = 16;

/// The bucket of stream sequence `seq`.
pub fn bucket_of(seq: u64) -> i64 {
    (seq >> BUCKET_BITS) as i64
}

/// The inclusive sequence range `[lo, hi]` a page query covers, or `None` when it is empty.
pub fn seq_range(after: Option<u64>, before: Option<u64>) -> Option<(u64, u64)> {
    let lo = after.map_or(Some(1), |a| a.checked_add(1))?.max(1);
    let hi = before.map_or(Some(i64::MAX as u64), |b| b.checked_sub(1))?;
    let hi = hi.min(i64::MAX as u64);
    (lo <= hi).then_some((lo, hi))
}

/// How the keyspace is replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` with this many replicas: one datacenter, or tests.
    Simple {
        /// Replicas of each row.
        factor: u32,
    },
    /// `NetworkTopologyStrategy`: replicas per datacenter.
    NetworkTopology {
        /// `(datacenter, replicas)` pairs.
        datacenters: Vec<(String, u32)>,
    },
}

impl Replication {
    /// The CQL replication map.
    pub fn cql_map(&self) -> String {
        match self {
            Self::Simple { factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            Self::NetworkTopology { datacenters } => {
                let mut map = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, factor) in datacenters {
                    map.push_str(&format!(", '{}': {factor}", dc.replace('\'', "''")));
                }
                map.push('}');
                map
            }
        }
    }
}

/// Whether `name` is usable as an unquoted keyspace name (it is spliced into DDL, where CQL has
/// no bind markers).
pub fn valid_keyspace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.as_bytes()[0].is_ascii_alphabetic()
}

/// `CREATE KEYSPACE` for `keyspace`.
pub fn create_keyspace(keyspace: &str, replication: &Replication) -> String {
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {} AND durable_writes = true",
        replication.cql_map()
    )
}

/// The tables, in creation order.
pub fn create_tables(ks: &str) -> [String; 3] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.messages (\
             conv text, bucket bigint, seq bigint, id text, sender text, client_id text, \
             ts bigint, body text, PRIMARY KEY ((conv, bucket), seq)) \
             WITH CLUSTERING ORDER BY (seq DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.conv_buckets (\
             conv text, bucket bigint, PRIMARY KEY (conv, bucket)) \
             WITH CLUSTERING ORDER BY (bucket DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.watermarks (\
             part int, seq bigint, PRIMARY KEY (part, seq)) \
             WITH CLUSTERING ORDER BY (seq DESC)"
        ),
    ]
}

/// The CQL of each schema version, in order: `migrations(ks)[v - 1]` brings a keyspace from
/// version `v - 1` to `v`. Append only.
pub fn migrations(ks: &str) -> Vec<Vec<String>> {
    vec![create_tables(ks).to_vec()]
}

/// The tables of schema version 1, which every later version keeps.
const V1_TABLES: [&str; 3] = ["messages", "conv_buckets", "watermarks"];

/// The table holding the keyspace's schema version.
pub fn create_schema_version_table(ks: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {ks}.schema_version (component text PRIMARY KEY, version int)"
    )
}

/// The schema version row: no bind markers.
pub fn read_schema_version(ks: &str) -> String {
    format!("SELECT version FROM {ks}.schema_version WHERE component = 'history'")
}

/// Records the schema version: `(version)`.
pub fn write_schema_version(ks: &str) -> String {
    format!("INSERT INTO {ks}.schema_version (component, version) VALUES ('history', ?)")
}

/// The tables of a keyspace: `(keyspace name, lowercase)`.
pub const LIST_TABLES: &str = "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?";

/// The schema version of a keyspace holding `tables` and the version row `row`: the row when
/// there is one; else 1 when every version 1 table exists (a keyspace from before versions were
/// recorded), else 0 (no schema, or a writer still creating it).
pub fn found_version(tables: &[String], row: Option<i32>) -> i64 {
    match row {
        Some(version) => i64::from(version),
        None if V1_TABLES
            .iter()
            .all(|t| tables.iter().any(|have| have == t)) =>
        {
            1
        }
        None => 0,
    }
}

/// Every statement the store prepares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statements {
    /// Upserts one message: `(conv, bucket, seq, id, sender, client_id, ts, body)`.
    pub insert_message: String,
    /// Records that a bucket holds messages: `(conv, bucket)`.
    pub insert_bucket: String,
    /// A conversation's buckets in `[lo, hi]`, newest first: `(conv, lo, hi)`.
    pub buckets_desc: String,
    /// The same, oldest first.
    pub buckets_asc: String,
    /// Rows of one bucket with `lo <= seq <= hi`, newest first: `(conv, bucket, lo, hi, limit)`.
    pub page_desc: String,
    /// The same, oldest first.
    pub page_asc: String,
    /// Adds a watermark row: `(part, seq)`.
    pub insert_watermark: String,
    /// Deletes watermark rows below the new one: `(part, seq)`.
    pub trim_watermarks: String,
    /// The highest watermark row: `(part)`.
    pub read_watermark: String,
}

impl Statements {
    /// The statements for keyspace `ks`.
    pub fn new(ks: &str) -> Self {
        let page = |order: &str| {
            format!(
                "SELECT seq, id, sender, client_id, ts, body FROM {ks}.messages \
                 WHERE conv = ? AND bucket = ? AND seq >= ? AND seq <= ? ORDER BY seq {order} LIMIT ?"
            )
        };
        let buckets = |order: &str| {
            format!(
                "SELECT bucket FROM {ks}.conv_buckets \
                 WHERE conv = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket {order}"
            )
        };
        Self {
            insert_message: format!(
                "INSERT INTO {ks}.messages (conv, bucket, seq, id, sender, client_id, ts, body) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            insert_bucket: format!("INSERT INTO {ks}.conv_buckets (conv, bucket) VALUES (?, ?)"),
            buckets_desc: buckets("DESC"),
            buckets_asc: buckets("ASC"),
            page_desc: page("DESC"),
            page_asc: page("ASC"),
            insert_watermark: format!("INSERT INTO {ks}.watermarks (part, seq) VALUES (?, ?)"),
            trim_watermarks: format!("DELETE FROM {ks}.watermarks WHERE part = ? AND seq < ?"),
            read_watermark: format!("SELECT seq FROM {ks}.watermarks WHERE part = ? LIMIT 1"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_sequence_ranges() {
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(65_535), 0);
        assert_eq!(bucket_of(65_536), 1);
        assert_eq!(bucket_of(3 * 65_536 + 7), 3);
        assert_eq!(bucket_of(i64::MAX as u64), i64::MAX >> BUCKET_BITS);
    }

    #[test]
    fn page_bounds_become_inclusive_ranges() {
        assert_eq!(seq_range(None, None), Some((1, i64::MAX as u64)));
        assert_eq!(seq_range(Some(10), Some(20)), Some((11, 19)));
        assert_eq!(seq_range(Some(10), Some(11)), None);
        assert_eq!(seq_range(None, Some(1)), None);
        assert_eq!(seq_range(None, Some(0)), None);
        assert_eq!(seq_range(Some(u64::MAX), None), None);
        assert_eq!(seq_range(None, Some(u64::MAX)), Some((1, i64::MAX as u64)));
    }

    #[test]
    fn replication_maps() {
        assert_eq!(
            Replication::Simple { factor: 3 }.cql_map(),
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
        let nts = Replication::NetworkTopology {
            datacenters: vec![("eu-1".into(), 3), ("us'x".into(), 2)],
        };
        assert_eq!(
            nts.cql_map(),
            "{'class': 'NetworkTopologyStrategy', 'eu-1': 3, 'us''x': 2}"
        );
        assert!(create_keyspace("chat", &Replication::Simple { factor: 1 })
            .starts_with("CREATE KEYSPACE IF NOT EXISTS chat WITH replication = {'class'"));
    }

    #[test]
    fn keyspace_names_are_checked() {
        assert!(valid_keyspace("chatfabric_test_1"));
        for bad in ["", "1abc", "a-b", "a;DROP", "a.b", &"k".repeat(49)] {
            assert!(!valid_keyspace(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_version_comes_from_the_row_else_from_the_tables() {
        let tables = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(found_version(&[], None), 0, "no keyspace");
        assert_eq!(found_version(&tables(&["schema_version"]), None), 0);
        assert_eq!(
            found_version(&tables(&["messages", "conv_buckets"]), None),
            0,
            "a writer still creating the tables"
        );
        let v1 = tables(&["conv_buckets", "messages", "watermarks"]);
        assert_eq!(
            found_version(&v1, None),
            1,
            "created before versions were recorded"
        );
        assert_eq!(found_version(&v1, Some(1)), 1);
        assert_eq!(found_version(&v1, Some(7)), 7, "the row wins");
        assert_eq!(migrations("ks").len(), 1);
    }

    #[test]
    fn version_statements_name_the_keyspace() {
        assert!(create_schema_version_table("ks").contains("ks.schema_version"));
        assert!(read_schema_version("ks").starts_with("SELECT version FROM ks.schema_version"));
        assert_eq!(write_schema_version("ks").matches('?').count(), 1);
        assert_eq!(LIST_TABLES.matches('?').count(), 1);
    }

    #[test]
    fn statements_name_the_keyspace_and_bind_everything() {
        let s = Statements::new("ks");
        assert!(s.insert_message.starts_with("INSERT INTO ks.messages"));
        assert_eq!(s.insert_message.matches('?').count(), 8);
        assert_eq!(s.page_desc.matches('?').count(), 5);
        assert!(s.page_desc.contains("ORDER BY seq DESC LIMIT ?"));
        assert!(s.page_asc.contains("ORDER BY seq ASC"));
        assert!(s.buckets_desc.contains("ORDER BY bucket DESC"));
        assert!(s.read_watermark.ends_with("LIMIT 1"));
        for table in create_tables("ks") {
            assert!(table.starts_with("CREATE TABLE IF NOT EXISTS ks."));
            assert!(table.contains("CLUSTERING ORDER BY"));
        }
    }
}
