//! History paging, for any number of messages, any gaps between their cursors and any page size:
//! walking back from the newest and forward from the start each visit every message exactly once,
//! in order (property test on the SQLite store).

use chatfabric_nats::ConvId;
use chatfabric_storage::{HistoryStore, PageQuery};
use proptest::prelude::*;

use crate::contract::record;
use crate::fixture::SqliteFixture;

fn walk(store: &dyn HistoryStore, conv: &ConvId, page: usize, back: bool) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut seen = Vec::new();
        let mut query = if back {
            PageQuery::latest(page)
        } else {
            PageQuery::after(0, page)
        };
        // Every page holds at least one message until the end, so this many pages suffice.
        for _ in 0..=10_000 {
            let rows = store.page(conv, query).await.expect("page");
            assert!(rows.len() <= page, "a page holds at most its limit");
            assert!(rows.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
            let (Some(newest), Some(oldest)) = (rows.first(), rows.last()) else {
                return seen;
            };
            if back {
                query = PageQuery::before(oldest.seq, page);
                seen.extend(rows.iter().map(|r| r.seq));
            } else {
                query = PageQuery::after(newest.seq, page);
                seen.extend(rows.iter().rev().map(|r| r.seq));
            }
        }
        panic!("the walk never ended");
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_walk_visits_every_message_once(
        gaps in proptest::collection::vec(1u64..1000, 0..300),
        page in 1usize..150,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let db = rt.block_on(SqliteFixture::open());
        let mut seq = 0u64;
        let seqs: Vec<u64> = gaps.iter().map(|g| { seq += g; seq }).collect();
        let records: Vec<_> = seqs.iter().map(|&s| record("walk", s)).collect();
        if !records.is_empty() {
            rt.block_on(db.store.write_batch(&records, None)).expect("write");
        }
        let conv = ConvId::new("walk").unwrap();
        let mut back = walk(db.store.as_ref(), &conv, page, true);
        back.reverse();
        prop_assert_eq!(&back, &seqs);
        prop_assert_eq!(walk(db.store.as_ref(), &conv, page, false), seqs);
    }
}
