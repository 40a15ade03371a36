//! Messages: send (validate -> membership -> publish -> ack), history pages, subscriptions.

use chatfabric_nats::ConvId;

use super::caller::Caller;
use super::context::Service;
use super::error::ServiceError;
use crate::fanout::{ConnId, Outlet};
use crate::history::Page;
use crate::send;

/// A message to post.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The conversation.
    pub conv: ConvId,
    /// The sender's idempotency key.
    pub client_id: String,
    /// The text.
    pub body: String,
}

/// A stored message: what its sender is acknowledged with.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The conversation.
    pub conv: ConvId,
    /// The sender's idempotency key.
    pub client_id: String,
    /// The message's cursor.
    pub seq: u64,
    /// True when the client id had been stored before (a retry); `seq` is the original's.
    pub duplicate: bool,
}

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
    /// Stores a message as the caller and resolves once JetStream acknowledged it: the same
    /// validation, dedupe id and ack point for every front end. What the application posts
    /// (as a service or on a user's behalf) is stored with the caller's [`Caller::via`].
    pub async fn send(&self, caller: &Caller, req: SendRequest) -> Result<Sent, ServiceError> {
        send::validate(&req.client_id, &req.body, self.limits.max_body)?;
        self.require_member(caller, &req.conv).await?;
        let stored = send::publish(
            &self.fabric,
            &self.metrics,
            send::Draft {
                conv: req.conv.clone(),
                sender: caller.acting_as().clone(),
                via: caller.via(),
                client_id: req.client_id.clone(),
                body: req.body,
            },
            self.limits.publish_timeout,
        )
        .await
        .inspect_err(|e| tracing::warn!(conv = %req.conv, error = %e, "send failed"))?;
        Ok(Sent {
            conv: req.conv,
            client_id: req.client_id,
            seq: stored.seq,
            duplicate: stored.duplicate,
        })
    }

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
