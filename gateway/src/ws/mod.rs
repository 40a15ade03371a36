//! The WebSocket front: one task per connection.
//!
//! # Layout
//!
//! - `io`: the byte stream tungstenite reads from and whose writes go through the outbox.
//! - `socket`: the socket task: authenticate, the read loop, replies, the part of the outbound
//!   queue the socket did not take at once, closes within the grace.
//! - `session`: the connection's operations: each frame rate-limited, decoded and dispatched to
//!   the [`Service`](crate::service::Service).

mod io;
mod session;
pub(crate) mod socket;

pub(crate) use io::SocketIo;
pub(crate) use socket::serve;
