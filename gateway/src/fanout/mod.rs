//! Fan-out: one NATS subscription per conversation with local subscribers, gap-free delivery.
//!
//! Each conversation with at least one local subscriber has one actor task ([`ConvActor`]) that owns
//! the conversation's core NATS subscription on `chat.live.<part>.<conv>`, the list of local
//! subscribers, and the conversation's delivery cursor `last`. Because one task does all of a
//! conversation's work, ordering needs no locks:
//!
//! - **Chain check.** JetStream's `republish` stamps every live copy with `Nats-Sequence` and
//!   `Nats-Last-Sequence` (the previous sequence of the same conversation). A copy whose
//!   `Nats-Last-Sequence` is not `last` reveals a gap (the subscription dropped messages, or NATS
//!   reconnected); the actor fetches the missing messages from the stream leader, which holds
//!   every acknowledged write (`stored.rs`), and delivers them before the live one. Copies at or
//!   below `last` are duplicates and are dropped.
//! - **Encode once.** Each message is encoded into one `msg` frame whose bytes are shared by every
//!   local subscriber (and kept in a small ring for cheap resumes).
//! - **Resume.** A subscription with a cursor gets the messages after it, then joins the live list,
//!   all inside the actor, so nothing can slip in between. What the ring holds is queued at once.
//!   Older messages are a [`Replay`]: each actor turn without live work or commands replays one
//!   chunk ([`REPLAY_CHUNK`] messages from JetStream) of one replay, round robin, and only while
//!   the connection's queue is at most half full; otherwise the replay waits, without holding the
//!   actor, for the client to read. A replay that reaches `last` joins the live list in the same
//!   turn. So a long resume costs others at most one chunk's latency, and its memory is bounded by
//!   the connection's queue.
//! - **Slow clients.** Frames go to each connection's bounded queue (frames and bytes) without
//!   waiting; a full queue gets the connection closed with [`close::SLOW_CONSUMER`], and the actor
//!   never waits for it.
//!
//! - **Ephemeral events.** The actor also owns the conversation's `chat.eph.<conv>.*` subscription
//!   (presence, typing, read receipts). Each event is parsed, checked to belong to this
//!   conversation, re-encoded once and `try_send` to every local subscriber. They are at most once
//!   by nature, so a full queue drops the event for that connection (counted) instead of closing it.
//!   Only subscribers, who are members, receive them: that is the privacy rule for events.
//!
//! # Layout
//!
//! - `hub`: conversations mapped to actors in shards (by hash), like centrifuge's hub; the
//!   only way in ([`Hub`]).
//! - `actor`: one conversation's actor: live and ephemeral subscriptions, chain check, gap
//!   fills, encode once, delivery to each connection's [`Outbox`](crate::outbox::Outbox).
//! - `resume`: subscribing with a cursor: the ring, then chunked replays.

mod actor;
mod errors;
mod hub;
mod outlet;
mod resume;
mod shards;

pub use errors::{BoxError, Expired, FanoutError, FeedError};
pub use hub::Hub;
pub use outlet::{ConnId, Outlet};
pub use shards::{HubConfig, REPLAY_CHUNK};
