//! The [`HistoryStore`] contract, written once and run against every backend.
//!
//! SQLite always runs. ScyllaDB runs when `SCYLLA_URI` names a node (comma separated for several)
//! at build time; each test then gets its own keyspace. Without it the ScyllaDB tests report as
//! ignored, with the reason (see `build.rs`).

use std::collections::HashSet;

use chatfabric_nats::wire::StoredMessage;
use chatfabric_nats::{ConvId, UserId};
use chatfabric_storage::{HistoryStore, PageQuery, StoredRecord, Watermark, MAX_PAGE_LIMIT};

pub(crate) fn record(conv: &str, seq: u64) -> StoredRecord {
    StoredRecord {
        seq,
        msg: StoredMessage {
            via: None,
            id: format!("id-{conv}-{seq}"),
            conv: ConvId::new(conv).unwrap(),
            sender: UserId::new("alice").unwrap(),
            client_id: format!("c{seq}"),
            ts: 1_700_000_000_000u64.wrapping_add(seq) % (1 << 62),
            body: format!("message {seq} of {conv}"),
        },
    }
}

fn conv(s: &str) -> ConvId {
    ConvId::new(s).unwrap()
}

fn seqs(page: &[StoredRecord]) -> Vec<u64> {
    page.iter().map(|r| r.seq).collect()
}

async fn idempotent_rewrite(store: &dyn HistoryStore) {
    let batch: Vec<_> = (1..=10).map(|s| record("idem", s)).collect();
    store.write_batch(&batch, None).await.unwrap();
    store.write_batch(&batch, None).await.unwrap();
    store.write_batch(&batch[3..7], None).await.unwrap();
    // One batch holding the same record twice, as a redelivery inside one fetch would.
    store
        .write_batch(&[record("idem", 11), record("idem", 11)], None)
        .await
        .unwrap();
    let page = store
        .page(&conv("idem"), PageQuery::latest(100))
        .await
        .unwrap();
    assert_eq!(seqs(&page), (1..=11).rev().collect::<Vec<_>>());
    assert_eq!(page[0], record("idem", 11), "content round-trips");
}

async fn newest_first(store: &dyn HistoryStore) {
    let batch: Vec<_> = [5, 1, 9, 3, 7]
        .iter()
        .map(|&s| record("order", s))
        .collect();
    store.write_batch(&batch, None).await.unwrap();
    let page = store
        .page(&conv("order"), PageQuery::latest(10))
        .await
        .unwrap();
    assert_eq!(seqs(&page), vec![9, 7, 5, 3, 1]);
    let page = store
        .page(&conv("order"), PageQuery::latest(2))
        .await
        .unwrap();
    assert_eq!(seqs(&page), vec![9, 7]);
    let page = store
        .page(&conv("order"), PageQuery::before(7, 10))
        .await
        .unwrap();
    assert_eq!(seqs(&page), vec![5, 3, 1], "before is exclusive");
    let page = store
        .page(&conv("order"), PageQuery::after(3, 2))
        .await
        .unwrap();
    assert_eq!(
        seqs(&page),
        vec![7, 5],
        "after-anchored: just above, newest first"
    );
    let both = PageQuery {
        before: Some(9),
        after: Some(1),
        limit: 2,
    };
    let page = store.page(&conv("order"), both).await.unwrap();
    assert_eq!(seqs(&page), vec![7, 5], "both bounds: anchored at before");
    let page = store
        .page(&conv("order"), PageQuery::latest(0))
        .await
        .unwrap();
    assert!(page.is_empty());
    let page = store
        .page(&conv("nobody"), PageQuery::latest(10))
        .await
        .unwrap();
    assert!(page.is_empty());
}

/// 10k messages of one conversation, interleaved with another's so its sequences are sparse (and,
/// in ScyllaDB, span several buckets).
async fn paging_visits_every_message_once(store: &dyn HistoryStore) {
    const N: u64 = 10_000;
    let mine = |i: u64| i * 17 + 3;
    let all: Vec<_> = (0..N)
        .flat_map(|i| [record("walk", mine(i)), record("other", mine(i) + 1)])
        .collect();
    for chunk in all.chunks(512) {
        store.write_batch(chunk, None).await.unwrap();
    }
    let expected: Vec<u64> = (0..N).map(mine).collect();

    // Scrolling back from the newest.
    let mut seen = Vec::new();
    let mut query = PageQuery::latest(97);
    loop {
        let page = store.page(&conv("walk"), query).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
        query = PageQuery::before(last.seq, 97);
        seen.extend(seqs(&page));
    }
    seen.reverse();
    assert_eq!(seen, expected, "scrolling back visits each message once");

    // Catching up from the start.
    let mut seen = Vec::new();
    let mut query = PageQuery::after(0, 89);
    loop {
        let page = store.page(&conv("walk"), query).await.unwrap();
        let Some(first) = page.first() else { break };
        assert!(page.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
        query = PageQuery::after(first.seq, 89);
        seen.extend(seqs(&page).into_iter().rev());
    }
    assert_eq!(seen, expected, "catching up visits each message once");

    let page = store
        .page(&conv("walk"), PageQuery::latest(MAX_PAGE_LIMIT * 5))
        .await
        .unwrap();
    assert_eq!(page.len(), MAX_PAGE_LIMIT, "limit is capped");
}

async fn conversations_isolated(store: &dyn HistoryStore) {
    let batch: Vec<_> = (1..=30)
        .map(|s| record(["iso-a", "iso-b", "iso-c"][(s % 3) as usize], s))
        .collect();
    store.write_batch(&batch, None).await.unwrap();
    for (name, rem) in [("iso-a", 0), ("iso-b", 1), ("iso-c", 2)] {
        let page = store
            .page(&conv(name), PageQuery::latest(100))
            .await
            .unwrap();
        assert_eq!(page.len(), 10);
        assert!(page
            .iter()
            .all(|r| r.msg.conv.as_str() == name && r.seq % 3 == rem));
        let ids: HashSet<_> = page.iter().map(|r| r.msg.id.clone()).collect();
        assert_eq!(ids.len(), 10);
    }
}

async fn watermark_only_rises(store: &dyn HistoryStore) {
    assert_eq!(store.watermark(0).await.unwrap(), 0, "nothing recorded yet");
    let wm = |partition, seq| Some(Watermark { partition, seq });
    store
        .write_batch(&[record("wm", 1)], wm(0, 5))
        .await
        .unwrap();
    assert_eq!(store.watermark(0).await.unwrap(), 5);
    store
        .write_batch(&[record("wm", 2)], wm(0, 3))
        .await
        .unwrap();
    assert_eq!(
        store.watermark(0).await.unwrap(),
        5,
        "never moves backwards"
    );
    store.write_batch(&[], wm(0, 40)).await.unwrap();
    assert_eq!(
        store.watermark(0).await.unwrap(),
        40,
        "empty batch carries a watermark"
    );
    store.write_batch(&[], wm(3, 7)).await.unwrap();
    assert_eq!(store.watermark(3).await.unwrap(), 7);
    assert_eq!(
        store.watermark(0).await.unwrap(),
        40,
        "partitions are independent"
    );
    assert_eq!(store.watermark(1).await.unwrap(), 0);
}

async fn rejects_out_of_range_records(store: &dyn HistoryStore) {
    assert!(store.write_batch(&[record("bad", 0)], None).await.is_err());
    assert!(store
        .write_batch(&[record("bad", u64::MAX)], None)
        .await
        .is_err());
    let page = store
        .page(&conv("bad"), PageQuery::latest(10))
        .await
        .unwrap();
    assert!(page.is_empty());
}

macro_rules! contract_tests {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let fixture = crate::fixture::SqliteFixture::open().await;
                    super::$check(&*fixture.store).await;
                }
            )*
        }
        mod scylla {
            $(
                #[tokio::test]
                #[cfg_attr(not(has_scylla), ignore = "needs ScyllaDB: set SCYLLA_URI=host:9042")]
                async fn $check() {
                    let store = crate::fixture::scylla_store(stringify!($check)).await;
                    super::$check(&*store).await;
                }
            )*
        }
    };
}

contract_tests!(
    idempotent_rewrite,
    newest_first,
    paging_visits_every_message_once,
    conversations_isolated,
    watermark_only_rises,
    rejects_out_of_range_records,
);
