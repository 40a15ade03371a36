//! What travels through a connection's outbound queue, and what each item costs against its budget.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What travels through a connection's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// One frame (a live message).
    Frame(Utf8Bytes),
    /// Frames that must be written in order without interleaving: a `subscribed` reply followed by
    /// replayed messages, or one chunk of a replay. One queue slot; its bytes all count.
    Batch(Vec<Utf8Bytes>),
    /// A reply to one of the client's requests (WebSocket only), fragmented when large. Never
    /// refused and not counted against the budget: requests in flight are capped instead.
    Reply(Utf8Bytes),
    /// Bytes already framed by tungstenite (pongs, the close frame).
    Raw(Bytes),
}

impl Outbound {
    /// The bytes this item holds.
    pub fn size(&self) -> usize {
        match self {
            Self::Frame(f) => f.len(),
            Self::Batch(frames) => frames.iter().map(|f| f.len()).sum(),
            Self::Reply(_) | Self::Raw(_) => 0,
        }
    }
}
