//! The fan-out's handle on one connection: who it is and its bounded outbox.

use std::sync::Arc;

use chatfabric_nats::UserId;

use crate::outbox::Outbox;

/// A connection's id, unique within a gateway process.
pub type ConnId = u64;

/// The fan-out's handle on one connection.
#[derive(Clone)]
pub struct Outlet {
    /// The connection.
    pub conn: ConnId,
    /// Its authenticated user.
    pub user: UserId,
    /// Its bounded outbound queue, and how to close it.
    pub outbox: Arc<Outbox>,
}
