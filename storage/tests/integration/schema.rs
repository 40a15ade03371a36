//! Who owns the schema, against a real ScyllaDB: the writer creates and migrates it, a reader
//! never does and refuses a version it does not know. (SQLite's are unit tests of `config.rs`.)

use chatfabric_nats::ConvId;
use chatfabric_storage::{HistoryStore, PageQuery, ScyllaStore, StoreError};
use scylla::client::session_builder::SessionBuilder;

use crate::contract::record;
use crate::fixture::scylla_config;

#[tokio::test]
#[cfg_attr(not(has_scylla), ignore = "needs ScyllaDB: set SCYLLA_URI=host:9042")]
async fn a_scylla_reader_needs_the_writers_schema_and_refuses_a_newer_one() {
    let config = scylla_config("schema_roles");
    assert!(matches!(
        ScyllaStore::connect_for_reads(config.clone()).await,
        Err(StoreError::SchemaMissing { .. })
    ));
    let writer = ScyllaStore::connect(config.clone()).await.unwrap();
    writer.write_batch(&[record("c", 1)], None).await.unwrap();
    let reader = ScyllaStore::connect_for_reads(config.clone())
        .await
        .unwrap();
    let page = reader
        .page(&ConvId::new("c").unwrap(), PageQuery::latest(10))
        .await
        .unwrap();
    assert_eq!(page, vec![record("c", 1)]);

    // As a newer writer would leave it.
    let session = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .build()
        .await
        .unwrap();
    let ks = &config.keyspace;
    session
        .query_unpaged(
            format!("UPDATE {ks}.schema_version SET version = 99 WHERE component = 'history'"),
            (),
        )
        .await
        .unwrap();
    for opened in [
        ScyllaStore::connect_for_reads(config.clone()).await,
        ScyllaStore::connect(config.clone()).await,
    ] {
        assert!(matches!(
            opened,
            Err(StoreError::SchemaTooNew {
                found: 99,
                supported: 1,
                ..
            })
        ));
    }
}
