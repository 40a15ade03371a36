//! The WebSocket front: one task per connection.
//!
//! # Layout
//!
//! - `socket`: the socket task: authenticate, the read loop, writes of replies and of the
//!   outbound queue, closes within the grace.
//! - `session`: the connection's operations: each frame rate-limited, decoded and dispatched to
//!   the [`Service`](crate::service::Service).

mod session;
pub(crate) mod socket;

pub(crate) use socket::serve;
