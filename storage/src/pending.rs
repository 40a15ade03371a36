//! A reader that started before the writer created the schema.
//!
//! A gateway may start before any persister (`chatfabric dev` starts them together, compose and
//! the deployment scripts in any order). Until a writer has created the schema nothing is
//! stored, so "nothing stored" is the true answer: watermark 0 and empty pages, which sends the
//! gateway to JetStream for every message (what it does above the watermark anyway). Each call
//! first tries to open the store again (at most once per `recheck`); from the first success on,
//! every call goes to the real store.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chatfabric_nats::ConvId;
use futures::future::BoxFuture;

use crate::store::{HistoryStore, PageQuery, StoreError, StoredRecord, Watermark};

/// What opens the real store for reads.
type Opener =
    Box<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn HistoryStore>, StoreError>> + Send + Sync>;

/// A read-only [`HistoryStore`] over a store whose schema does not exist yet; see the module docs.
pub struct PendingSchema {
    /// Opens the real store; [`StoreError::SchemaMissing`] means "not yet".
    open: Opener,
    /// The shortest pause between two attempts to open.
    recheck: Duration,
    /// When the last attempt started; locked while one runs, so attempts never pile up.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    /// The real store, once it opened.
    opened: OnceLock<Arc<dyn HistoryStore>>,
}

impl PendingSchema {
    /// A store that answers as empty until `open` succeeds, trying it at most once per `recheck`.
    pub fn new<F, Fut>(open: F, recheck: Duration) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn HistoryStore>, StoreError>> + Send + 'static,
    {
        Self {
            open: Box::new(move || Box::pin(open())),
            recheck,
            last_attempt: tokio::sync::Mutex::new(None),
            opened: OnceLock::new(),
        }
    }

    /// The real store if it exists by now; `None` while the schema is still missing. Any other
    /// failure to open (a schema too new, I/O) is the caller's error.
    async fn store(&self) -> Result<Option<Arc<dyn HistoryStore>>, StoreError> {
        if let Some(store) = self.opened.get() {
            return Ok(Some(Arc::clone(store)));
        }
        // Another call is trying right now: answer from what is known (nothing stored yet).
        let Ok(mut last) = self.last_attempt.try_lock() else {
            return Ok(None);
        };
        if let Some(store) = self.opened.get() {
            return Ok(Some(Arc::clone(store)));
        }
        if last.is_some_and(|at| at.elapsed() < self.recheck) {
            return Ok(None);
        }
        *last = Some(Instant::now());
        match (self.open)().await {
            Ok(store) => {
                tracing::info!("the history schema exists now; reading history from the store");
                Ok(Some(Arc::clone(self.opened.get_or_init(|| store))))
            }
            Err(StoreError::SchemaMissing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl HistoryStore for PendingSchema {
    async fn write_batch(
        &self,
        _records: &[StoredRecord],
        _watermark: Option<Watermark>,
    ) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly)
    }

    async fn page(&self, conv: &ConvId, query: PageQuery) -> Result<Vec<StoredRecord>, StoreError> {
        match self.store().await? {
            Some(store) => store.page(conv, query).await,
            None => Ok(Vec::new()),
        }
    }

    async fn watermark(&self, partition: u16) -> Result<u64, StoreError> {
        match self.store().await? {
            Some(store) => store.watermark(partition).await,
            None => Ok(0),
        }
    }
}
