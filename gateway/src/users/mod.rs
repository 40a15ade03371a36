//! Users' disconnects and token revocations from the server API, on every gateway.
//!
//! The server API writes a user's disconnect to the `CHAT_USERS` bucket (`d.<user>`,
//! [`UserDisconnect`](chatfabric_nats::wire::UserDisconnect)); every gateway watches the bucket,
//! so each learns of it, also after being cut off from NATS for a while (a restarted watch
//! delivers every key's last value again). On each it closes the user's connections that were
//! open at the disconnect's time (or hold a revoked token), and hands the revocation to the
//! [`Authenticator`](crate::auth::Authenticator), which refuses older tokens from then on.
//!
//! # Layout
//!
//! - `roster`: this gateway's open connections per user ([`Roster`]).
//! - `watch`: the bucket watch.

mod roster;
mod watch;

pub use roster::{Listed, Roster};
pub use watch::watch;
