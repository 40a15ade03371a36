//! History pages: the store below the persister's watermark, JetStream above it.
//!
//! Every message of a partition stream at or below the store's watermark is in the store; anything
//! above may not be yet. A page is therefore split at the watermark: the part at or below comes
//! from the store, the part above from JetStream (the conversation's subject, read from the stream
//! leader: `stored.rs`). An acknowledged message is in history at once, even while the persister
//! lags or is down.
//!
//! Pages are cached (moka). A page is cached only once its range is fixed: `before` is resolved to
//! the conversation's head + 1 when absent, and a range of immutable, append-only messages below a
//! known head never changes. Concurrent identical reads share one query. The cache is bounded in
//! bytes (each page weighs what its messages hold), and a page in bytes ([`MAX_PAGE_BYTES`]): a
//! page that would exceed it ends early, at the messages nearest its anchor, so walks continue
//! from it as from any page.

use std::sync::Arc;

use chatfabric_nats::wire::StoredMessage;
use chatfabric_nats::{ConvId, Fabric};
use chatfabric_storage::{HistoryStore, PageQuery, StoredRecord, MAX_PAGE_LIMIT};
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;

use crate::metrics::ObserveOnDrop;

/// Why a page could not be read. Cloned: concurrent identical reads share one query, and its
/// failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    /// `before` and `after` leave nothing, or `limit` is 0.
    #[error("{0}")]
    Invalid(&'static str),
    /// The store or JetStream failed.
    #[error("history unavailable: {0}")]
    Unavailable(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

/// The store's or JetStream's error, kept as the source.
fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> HistoryError {
    HistoryError::Unavailable(Arc::new(e))
}

/// One message of a history page, as clients receive it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryMessage {
    /// The message's cursor.
    pub seq: u64,
    /// Server-assigned id.
    pub id: String,
    /// Who sent it.
    pub sender: chatfabric_nats::UserId,
    /// The sender's idempotency key.
    pub client_id: String,
    /// Server timestamp, ms since the Unix epoch.
    pub ts: u64,
    /// The text.
    pub body: String,
    /// How the application posted it, if it did (see [`chatfabric_nats::wire::Via`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<chatfabric_nats::wire::Via>,
}

impl HistoryMessage {
    fn new(seq: u64, m: StoredMessage) -> Self {
        Self {
            seq,
            id: m.id,
            sender: m.sender,
            client_id: m.client_id,
            ts: m.ts,
            body: m.body,
            via: m.via,
        }
    }
}

/// A page, newest first.
pub type Page = Arc<Vec<HistoryMessage>>;

/// Rows asked of the store at once.
const STORE_BATCH: usize = 64;

/// The history cache's default size in bytes (`--history-cache-bytes`).
pub const DEFAULT_HISTORY_CACHE_BYTES: u64 = 64 << 20;

/// Most bytes of encoded messages in one page: it bounds what one reply and one cached page hold.
pub const MAX_PAGE_BYTES: usize = 192 * 1024;

/// What a message adds to a page once encoded (a slight overestimate: it counts `conv`, which
/// the page frame carries once).
fn encoded_len(msg: &StoredMessage) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(24); // "seq" and separators
    let _ = serde_json::to_writer(&mut count, msg);
    count.0
}

/// The memory a cached page holds, for the cache's byte bound.
fn weight(key: &PageKey, page: &Page) -> u32 {
    let messages: usize = page
        .iter()
        .map(|m| {
            std::mem::size_of::<HistoryMessage>()
                + m.id.len()
                + m.sender.as_str().len()
                + m.client_id.len()
                + m.body.len()
        })
        .sum();
    let total = messages + std::mem::size_of::<PageKey>() + key.conv.as_str().len() + 64;
    u32::try_from(total).unwrap_or(u32::MAX)
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PageKey {
    conv: ConvId,
    before: u64,
    after: u64,
    limit: usize,
    /// The oldest messages above `after`, rather than the newest below `before`.
    anchored_after: bool,
}

/// Reads history pages.
pub struct History {
    store: Arc<dyn HistoryStore>,
    fabric: Fabric,
    cache: moka::future::Cache<PageKey, Page>,
    latency: Option<Histogram>,
    cache_bytes: prometheus_client::metrics::gauge::Gauge,
}

impl History {
    /// Pages are read from `store` and `fabric`'s streams; pages holding up to `cache_bytes`
    /// bytes are cached, and `cache_gauge` follows what they hold.
    pub fn new(
        store: Arc<dyn HistoryStore>,
        fabric: Fabric,
        cache_bytes: u64,
        cache_gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> Self {
        Self {
            store,
            fabric,
            cache: moka::future::Cache::builder()
                .max_capacity(cache_bytes)
                .weigher(weight)
                .build(),
            latency: None,
            cache_bytes: cache_gauge,
        }
    }

    /// Records how long each page takes in `latency`.
    pub fn with_latency(mut self, latency: Histogram) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Messages of `conv` with `after < seq < before`, newest first, at most `limit`. With only
    /// `after`, the page holds the oldest messages above it (walk forward with `after =
    /// page[0].seq`); otherwise the newest below `before` (walk back with `before = last seq`).
    /// The caller has checked membership.
    pub async fn page(
        &self,
        conv: &ConvId,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let _timer = self.latency.as_ref().map(ObserveOnDrop::start);
        if limit == 0 || limit > MAX_PAGE_LIMIT {
            return Err(HistoryError::Invalid("limit must be 1 to 1000"));
        }
        let head = self.head(conv).await?;
        let Some((lower, upper)) = page_bounds(head, before, after) else {
            return Ok(Arc::default());
        };
        let key = PageKey {
            conv: conv.clone(),
            before: upper,
            after: lower,
            limit,
            anchored_after: before.is_none() && after.is_some(),
        };
        let page = self
            .cache
            .try_get_with(
                key.clone(),
                async move { self.read(&key).await.map(Arc::new) },
            )
            .await
            .map_err(|e| (*e).clone())?;
        self.cache.run_pending_tasks().await;
        self.cache_bytes
            .set(i64::try_from(self.cache.weighted_size()).unwrap_or(i64::MAX));
        Ok(page)
    }

    async fn read(&self, key: &PageKey) -> Result<Vec<HistoryMessage>, HistoryError> {
        let part = self.fabric.settings.partitions.of(&key.conv);
        let watermark = self.store.watermark(part).await.map_err(unavailable)?;
        // The store answers for seq <= watermark, JetStream for seq > watermark.
        let store_range = (key.after, key.before.min(watermark + 1));
        let stream_range = (key.after.max(watermark), key.before);
        let mut page: Vec<StoredRecord>;
        if key.anchored_after {
            // Oldest first. The store returns the oldest rows above `after`; rows above the
            // watermark (stored, but not yet counted) are left to JetStream.
            let mut older = if store_range.0 + 1 < store_range.1 {
                self.store_page(&key.conv, PageQuery::after(key.after, key.limit))
                    .await?
            } else {
                Vec::new()
            };
            older.retain(|r| r.seq < store_range.1);
            older.reverse();
            // A store read that stopped at the byte bound below the watermark fills the page;
            // anything newer from JetStream would leave a gap.
            let full = older.iter().map(|r| encoded_len(&r.msg)).sum::<usize>() > MAX_PAGE_BYTES;
            let rest = if full { 0 } else { key.limit - older.len() };
            let newer = self.stream_part(key, stream_range, rest, true).await?;
            page = older;
            page.extend(newer);
            page.reverse();
        } else {
            // Newest first: JetStream's part, then the store's below it.
            let mut newer = self
                .stream_part(key, stream_range, key.limit, false)
                .await?;
            newer.reverse();
            let rest = key.limit - newer.len();
            page = newer;
            if rest > 0 && store_range.0 + 1 < store_range.1 {
                let query = PageQuery {
                    before: Some(store_range.1),
                    after: Some(store_range.0),
                    limit: rest,
                };
                page.extend(self.store_page(&key.conv, query).await?);
            }
        }
        // Newest first. Keep the messages nearest the anchor within the byte bound: the oldest
        // for a page after `after`, the newest otherwise.
        if key.anchored_after {
            page.reverse();
        }
        let mut bytes = 0;
        let keep = page
            .iter()
            .take_while(|r| {
                bytes += encoded_len(&r.msg);
                bytes <= MAX_PAGE_BYTES
            })
            .count()
            .max(1);
        page.truncate(keep);
        if key.anchored_after {
            page.reverse();
        }
        Ok(page
            .into_iter()
            .map(|r| HistoryMessage::new(r.seq, r.msg))
            .collect())
    }

    /// The rows of `query`, newest first as the store returns them, read [`STORE_BATCH`] at a
    /// time and only until they hold [`MAX_PAGE_BYTES`]: what one read holds stays near a page's
    /// bound however large the messages.
    async fn store_page(
        &self,
        conv: &ConvId,
        mut query: PageQuery,
    ) -> Result<Vec<StoredRecord>, HistoryError> {
        let limit = query.capped_limit();
        let mut rows: Vec<StoredRecord> = Vec::new();
        let mut bytes = 0;
        while rows.len() < limit && bytes <= MAX_PAGE_BYTES {
            let batch = (limit - rows.len()).min(STORE_BATCH);
            let got = self
                .store
                .page(
                    conv,
                    PageQuery {
                        limit: batch,
                        ..query
                    },
                )
                .await
                .map_err(unavailable)?;
            let complete = got.len() < batch;
            bytes += got.iter().map(|r| encoded_len(&r.msg)).sum::<usize>();
            if query.anchored_after() {
                // The oldest rows above `after`: the next batch lies above them.
                let Some(newest) = got.first() else { break };
                query.after = Some(newest.seq);
                rows.splice(0..0, got);
            } else {
                let Some(oldest) = got.last() else { break };
                query.before = Some(oldest.seq);
                rows.extend(got);
            }
            if complete {
                break;
            }
        }
        Ok(rows)
    }

    /// Messages with `after < seq < before` from JetStream, ascending: the first `limit` when
    /// `oldest`, else the last `limit`.
    async fn stream_part(
        &self,
        key: &PageKey,
        (after, before): (u64, u64),
        limit: usize,
        oldest: bool,
    ) -> Result<Vec<StoredRecord>, HistoryError> {
        let mut out = std::collections::VecDeque::new();
        let mut bytes = 0;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stream = self.fabric.stream_for(&key.conv);
        let subject = self.fabric.settings.partitions.msg_subject(&key.conv);
        let mut cursor = after;
        while cursor + 1 < before {
            let m = match crate::stored::next(stream, &subject, cursor + 1).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return Err(unavailable(e)),
            };
            if m.sequence >= before {
                break;
            }
            cursor = m.sequence;
            // Unparsable messages are skipped, as the fan-out skips them.
            let Ok(msg) = serde_json::from_slice::<StoredMessage>(&m.payload) else {
                continue;
            };
            bytes += encoded_len(&msg);
            out.push_back(StoredRecord {
                seq: m.sequence,
                msg,
            });
            // Never more than a page holds, in messages or in bytes.
            if oldest {
                if out.len() == limit || bytes > MAX_PAGE_BYTES {
                    break;
                }
            } else {
                while out.len() > limit || (out.len() > 1 && bytes > MAX_PAGE_BYTES) {
                    if let Some(r) = out.pop_front() {
                        bytes -= encoded_len(&r.msg);
                    }
                }
            }
        }
        Ok(out.into())
    }

    /// A sequence no future message of `conv` can have or precede: the conversation's newest
    /// stored sequence, or the stream's last sequence when the stream holds none of it.
    ///
    /// Asked of the stream leader, not by direct get: any replica answers a direct get, and one
    /// that lags (or, on nats-server 2.9, stays behind after a restart) would name an old head,
    /// and the page, cached as fixed, would miss the newest messages.
    async fn head(&self, conv: &ConvId) -> Result<u64, HistoryError> {
        let subject = self.fabric.settings.partitions.msg_subject(conv);
        match crate::stored::last(self.fabric.stream_for(conv), &subject).await {
            Ok(Some(m)) => Ok(m.sequence),
            Ok(None) => self
                .fabric
                .stream_for(conv)
                .get_info()
                .await
                .map(|i| i.state.last_sequence)
                .map_err(unavailable),
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// The exclusive bounds `(after, before)` of a page of a conversation whose newest message is
/// `head`, or `None` when no message lies strictly between them (a cursor at or past the head
/// included). Saturating: no cursor a client sends can overflow it.
pub fn page_bounds(head: u64, before: Option<u64>, after: Option<u64>) -> Option<(u64, u64)> {
    let upper = head.saturating_add(1);
    let before = before.map_or(upper, |b| b.min(upper));
    let after = after.unwrap_or(0);
    (after.saturating_add(1) < before).then_some((after, before))
}

#[cfg(test)]
mod tests {
    use super::page_bounds;
    use proptest::prelude::*;

    proptest! {
        /// For any head and cursors, the bounds never overflow, stay within the conversation and
        /// are empty exactly when no message lies between them.
        #[test]
        fn bounds_stay_within_the_conversation(
            head in any::<u64>(),
            before in proptest::option::of(any::<u64>()),
            after in proptest::option::of(any::<u64>()),
        ) {
            let hi_limit = before.unwrap_or(u64::MAX).min(head.saturating_add(1));
            match page_bounds(head, before, after) {
                Some((lo, hi)) => {
                    prop_assert!(lo < head && lo + 1 < hi && hi == hi_limit);
                    prop_assert_eq!(lo, after.unwrap_or(0));
                }
                None => prop_assert!(after.unwrap_or(0).saturating_add(1) >= hi_limit),
            }
        }
    }

    #[test]
    fn a_cursor_at_or_past_the_head_is_an_empty_page() {
        assert_eq!(page_bounds(10, None, Some(10)), None);
        assert_eq!(page_bounds(10, None, Some(u64::MAX)), None);
        assert_eq!(page_bounds(u64::MAX, None, Some(u64::MAX - 1)), None);
        assert_eq!(page_bounds(10, Some(5), None), Some((0, 5)));
    }
}
