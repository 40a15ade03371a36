//! History pages: the store below the persister's watermark, JetStream above it.
//!
//! Every message of a partition stream at or below the store's watermark is in the store; anything
//! above may not be yet. A page is therefore split at the watermark: the part at or below comes
//! from the store, the part above from JetStream (direct gets on the conversation's subject). An
//! acknowledged message is in history at once, even while the persister lags or is down.
//!
//! Pages are cached (moka). A page is cached only once its range is fixed: `before` is resolved to
//! the conversation's head + 1 when absent, and a range of immutable, append-only messages below a
//! known head never changes. Concurrent identical reads share one query.

use std::sync::Arc;

use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
use chatfabric_nats::wire::StoredMessage;
use chatfabric_nats::{ConvId, Fabric};
use chatfabric_persister::{HistoryStore, PageQuery, StoredRecord, MAX_PAGE_LIMIT};
use serde::Serialize;

use crate::protocol::ErrorCode;

/// Why a page could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    /// `before` and `after` leave nothing, or `limit` is 0.
    #[error("{0}")]
    Invalid(&'static str),
    /// The store or JetStream failed.
    #[error("history unavailable: {0}")]
    Unavailable(String),
}

impl HistoryError {
    /// The client-facing error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::Invalid,
            Self::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
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
        }
    }
}

/// A page, newest first.
pub type Page = Arc<Vec<HistoryMessage>>;

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
}

impl History {
    /// Pages are read from `store` and `fabric`'s streams; up to `cache_pages` pages are cached.
    pub fn new(store: Arc<dyn HistoryStore>, fabric: Fabric, cache_pages: u64) -> Self {
        Self {
            store,
            fabric,
            cache: moka::future::Cache::builder()
                .max_capacity(cache_pages)
                .build(),
        }
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
        if limit == 0 {
            return Err(HistoryError::Invalid("limit must be at least 1"));
        }
        let limit = limit.min(MAX_PAGE_LIMIT);
        let head = self.head(conv).await?;
        let key = PageKey {
            conv: conv.clone(),
            before: before.map_or(head + 1, |b| b.min(head + 1)),
            after: after.unwrap_or(0),
            limit,
            anchored_after: before.is_none() && after.is_some(),
        };
        if key.after + 1 >= key.before {
            return Ok(Arc::default());
        }
        self.cache
            .try_get_with(
                key.clone(),
                async move { self.read(&key).await.map(Arc::new) },
            )
            .await
            .map_err(|e| (*e).clone())
    }

    async fn read(&self, key: &PageKey) -> Result<Vec<HistoryMessage>, HistoryError> {
        let part = self.fabric.settings.partitions.of(&key.conv);
        let watermark = self
            .store
            .watermark(part)
            .await
            .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
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
            let rest = key.limit - older.len();
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
        Ok(page
            .into_iter()
            .map(|r| HistoryMessage::new(r.seq, r.msg))
            .collect())
    }

    async fn store_page(
        &self,
        conv: &ConvId,
        query: PageQuery,
    ) -> Result<Vec<StoredRecord>, HistoryError> {
        self.store
            .page(conv, query)
            .await
            .map_err(|e| HistoryError::Unavailable(e.to_string()))
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
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stream = self.fabric.stream_for(&key.conv);
        let subject = self.fabric.settings.partitions.msg_subject(&key.conv);
        let mut cursor = after;
        while cursor + 1 < before {
            let m = match stream
                .direct_get_next_for_subject(&subject, Some(cursor + 1))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(HistoryError::Unavailable(e.to_string())),
            };
            if m.sequence >= before {
                break;
            }
            cursor = m.sequence;
            // Unparsable messages are skipped, as the fan-out skips them.
            let Ok(msg) = serde_json::from_slice::<StoredMessage>(&m.payload) else {
                continue;
            };
            out.push_back(StoredRecord {
                seq: m.sequence,
                msg,
            });
            if out.len() > limit {
                out.pop_front();
            }
            if oldest && out.len() == limit {
                break;
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
        match self
            .fabric
            .stream_for(conv)
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => self
                .fabric
                .stream_for(conv)
                .get_info()
                .await
                .map(|i| i.state.last_sequence)
                .map_err(|e| HistoryError::Unavailable(e.to_string())),
            Err(e) => Err(HistoryError::Unavailable(e.to_string())),
        }
    }
}
