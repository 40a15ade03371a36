//! The request service: every operation a front end offers, decided in one place.
//!
//! The WebSocket session, the HTTP front (REST and event streams) and the NATS ingest only
//! translate: they authenticate a [`Caller`], decode their wire format into the typed request of
//! an operation here, and encode its typed result (or [`ServiceError`]) back. The order of checks
//! is the service's: per-user limits, then membership, then the work (publish, page, KV write).
//! Per-connection limits (frames per second, re-subscribes, typing) stay with the connection.
//!
//! This module imports the domain (membership, send, history, fan-out, receipts, presence) and
//! never the wire protocol.
//!
//! # Layout
//!
//! - `context`: [`Service`] and [`ServiceLimits`].
//! - `caller`: who a request speaks for.
//! - `error`: [`ServiceError`].
//! - `messages`: send, history page, subscribe.
//! - `conversations`: create, add and remove members, members, listing.
//! - `receipts`: read receipts and unread counts.
//! - `presence`: the presence query and typing.
//! - `backend`: what only the application may do (the server API's conversations and users).

mod backend;
pub mod caller;
mod context;
mod conversations;
pub mod error;
mod messages;
mod presence;
mod receipts;
pub mod send;

pub use backend::MAX_PRESENCE_USERS;
pub use caller::Caller;
pub use context::{Service, ServiceLimits};
pub use conversations::{Created, MemberChange, NewConversation};
pub use error::{ServiceError, UsersError};
pub use messages::HistoryRequest;
pub use send::{SendRequest, Sent};
