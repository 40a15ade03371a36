//! Messages: history pages and subscriptions (sends are in [`send`](super::send)).

use chatfabric_nats::ConvId;

use super::caller::Caller;
use super::context::Service;
use super::error::ServiceError;
use crate::fanout::{ConnId, Outlet};
use crate::history::Page;

/// A history page to read: messages with `after < seq < before`, at most `limit`.
#[derive(Debug, Clone)]
pub struct HistoryRequest {
    /// The conversation.
    pub conv: ConvId,
    /// Only messages with `seq < before`.
    pub before: Option<u64>,
    /// Only messages with `seq > after`.
    pub after: Option<u64>,
    /// Page size.
    pub limit: usize,
}

impl Service {
    /// A history page, within the caller's per-user history budget.
    pub async fn history(
        &self,
        caller: &Caller,
        req: &HistoryRequest,
    ) -> Result<Page, ServiceError> {
        let limits = &self.limits;
        // The application's reads are its own to pace (the API key is the trust boundary).
        if caller.is_client()
            && !self.history_limits.allow(
                caller.acting_as(),
                limits.history_rate,
                limits.history_burst,
            )
        {
            return Err(ServiceError::RateLimited("history reads"));
        }
        self.require_member(caller, &req.conv).await?;
        Ok(self
            .history
            .page(&req.conv, req.before, req.after, req.limit)
            .await?)
    }

    /// Subscribes `outlet` to `conv` from `after` (see [`Hub::subscribe`](crate::fanout::Hub)):
    /// its queue gets the `subscribed` frame echoing `reference`, then the messages.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        conv: &ConvId,
        outlet: Outlet,
        after: Option<u64>,
        reference: Option<String>,
    ) -> Result<u64, ServiceError> {
        self.require_member(caller, conv).await?;
        Ok(self.hub.subscribe(conv, outlet, after, reference).await?)
    }

    /// Ends `conn`'s subscription to `conv`, if any.
    pub fn unsubscribe(&self, conv: &ConvId, conn: ConnId) {
        self.hub.unsubscribe(conv, conn);
    }
}
