//! A connection's bounded outbound queue and its close request, in one small allocation.
//!
//! The fan-out pushes shared frames with [`Outbox::push`], which never waits: a full queue is the
//! slow-consumer signal. The queue is bounded twice: in items (`--queue`) and in bytes
//! (`--queue-bytes`), so neither many small frames nor a few large ones can grow a connection's
//! memory past its budget. Replays do not push past [`Outbox::has_room`] (half the budget): they
//! wait for [`Outbox::room`], so a long resume streams at the reader's pace and leaves the other
//! half to live traffic. The connection task (WebSocket or SSE) is the only reader. An idle
//! connection's outbox costs about two hundred bytes: the queue allocates only while frames wait,
//! which matters at tens of thousands of idle connections per gateway (a tokio mpsc channel
//! allocates a 32-slot block up front, and a cancellation token another node).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What travels through a connection's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// One frame (a live message).
    Frame(Utf8Bytes),
    /// Frames that must be written in order without interleaving: a `subscribed` reply followed by
    /// replayed messages, or one chunk of a replay. One queue slot; its bytes all count.
    Batch(Vec<Utf8Bytes>),
}

impl Outbound {
    /// The bytes this item holds.
    pub fn size(&self) -> usize {
        match self {
            Self::Frame(f) => f.len(),
            Self::Batch(frames) => frames.iter().map(|f| f.len()).sum(),
        }
    }
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its capacity (items or bytes): the reader is too slow.
    Full,
    /// The connection is gone.
    Closed,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// The bytes of `items`.
    bytes: usize,
    closed: bool,
}

/// A bounded single-reader queue plus a close request.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Signals the reader that an item (or the close) arrived.
    ready: Notify,
    /// Signals waiting replays that the queue drained to half its budget (or closed).
    drained: Notify,
    /// The close code requested (0: none); the first request wins.
    kick: AtomicU16,
    kicked: Notify,
    capacity: usize,
    max_bytes: usize,
    /// The gateway-wide count of queued bytes.
    queued: Gauge,
}

/// Queue capacity kept after a burst drained; more is released, so a connection that once lagged
/// does not hold its peak forever.
const KEEP_CAPACITY: usize = 16;

impl Outbox {
    /// An empty outbox that holds at most `capacity` items and `max_bytes` bytes (an item larger
    /// than `max_bytes` is accepted into an empty queue, so it can always be delivered). `queued`
    /// counts the bytes of every outbox.
    pub fn new(capacity: usize, max_bytes: usize, queued: Gauge) -> Self {
        Self {
            queue: Mutex::default(),
            ready: Notify::new(),
            drained: Notify::new(),
            kick: AtomicU16::new(0),
            kicked: Notify::new(),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            queued,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The lock guards plain data and no code panics while holding it.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` without waiting.
    pub fn push(&self, item: Outbound) -> Result<(), Refused> {
        let size = item.size();
        {
            let mut q = self.lock();
            if q.closed {
                return Err(Refused::Closed);
            }
            let over_bytes = !q.items.is_empty() && q.bytes + size > self.max_bytes;
            if q.items.len() >= self.capacity || over_bytes {
                return Err(Refused::Full);
            }
            q.items.push_back(item);
            q.bytes += size;
        }
        self.queued.inc_by(size as i64);
        self.ready.notify_one();
        Ok(())
    }

    /// Whether the queue is at most half full, in items and in bytes: a replay may push a chunk.
    pub fn has_room(&self) -> bool {
        let q = self.lock();
        q.closed || (q.items.len() <= self.capacity / 2 && q.bytes <= self.max_bytes / 2)
    }

    /// The bytes a replay queues at most at once: with half the budget already queued, a chunk
    /// still fits.
    pub fn chunk_bytes(&self) -> usize {
        self.max_bytes / 4
    }

    /// Resolves once [`has_room`](Self::has_room) holds (also when the outbox closed).
    pub async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.has_room() {
                return;
            }
            drained.await;
        }
    }

    /// The next item, if one is queued.
    pub fn try_recv(&self) -> Option<Outbound> {
        let (item, room) = {
            let mut q = self.lock();
            let item = q.items.pop_front();
            if let Some(i) = &item {
                q.bytes -= i.size();
            }
            if q.items.is_empty() && q.items.capacity() > KEEP_CAPACITY {
                q.items.shrink_to(KEEP_CAPACITY);
            }
            (
                item,
                q.items.len() <= self.capacity / 2 && q.bytes <= self.max_bytes / 2,
            )
        };
        if let Some(i) = &item {
            self.queued.dec_by(i.size() as i64);
            if room {
                self.drained.notify_waiters();
            }
        }
        item
    }

    /// Waits for the next item. Only one task may read.
    pub async fn recv(&self) -> Outbound {
        loop {
            if let Some(item) = self.try_recv() {
                return item;
            }
            self.ready.notified().await;
        }
    }

    /// Refuses further pushes and drops what is queued (the reader is leaving).
    pub fn close(&self) {
        let dropped = {
            let mut q = self.lock();
            q.closed = true;
            q.items = VecDeque::new();
            std::mem::take(&mut q.bytes)
        };
        self.queued.dec_by(dropped as i64);
        self.drained.notify_waiters();
    }

    /// Asks the reader to close the connection with `code`. The first code wins.
    pub fn kick(&self, code: u16) {
        let _ = self
            .kick
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.kicked.notify_one();
    }

    /// Resolves with the close code once [`kick`](Self::kick) was called.
    pub async fn kicked(&self) -> u16 {
        loop {
            let code = self.kick.load(Ordering::Acquire);
            if code != 0 {
                return code;
            }
            self.kicked.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &'static str) -> Outbound {
        Outbound::Frame(Utf8Bytes::from_static(s))
    }

    #[tokio::test]
    async fn bounded_fifo_then_closed() {
        let o = Outbox::new(2, 1 << 20, Gauge::default());
        assert_eq!(o.push(frame("a")), Ok(()));
        assert_eq!(o.push(frame("b")), Ok(()));
        assert_eq!(o.push(frame("c")), Err(Refused::Full));
        assert!(matches!(o.recv().await, Outbound::Frame(f) if f.as_str() == "a"));
        assert_eq!(o.push(frame("c")), Ok(()));
        o.close();
        assert_eq!(o.push(frame("d")), Err(Refused::Closed));
        assert!(o.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_and_the_first_kick_wins() {
        let o = std::sync::Arc::new(Outbox::new(4, 1 << 20, Gauge::default()));
        let reader = tokio::spawn({
            let o = o.clone();
            async move { matches!(o.recv().await, Outbound::Frame(_)) }
        });
        tokio::task::yield_now().await;
        o.push(frame("x")).unwrap();
        assert!(reader.await.unwrap());
        o.kick(4008);
        o.kick(1001);
        assert_eq!(o.kicked().await, 4008);
    }

    #[test]
    fn an_idle_outbox_holds_no_queue_allocation() {
        let o = Outbox::new(256, 1 << 20, Gauge::default());
        for _ in 0..100 {
            o.push(frame("x")).unwrap();
        }
        while o.try_recv().is_some() {}
        assert!(o.lock().items.capacity() <= KEEP_CAPACITY);
    }

    #[tokio::test]
    async fn bytes_bound_the_queue_and_a_drain_wakes_a_waiting_replay() {
        let queued = Gauge::default();
        let o = std::sync::Arc::new(Outbox::new(256, 4, queued.clone()));
        assert_eq!(o.push(frame("abc")), Ok(()));
        assert!(!o.has_room());
        assert_eq!(o.push(frame("de")), Err(Refused::Full));
        assert_eq!(queued.get(), 3);
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        o.try_recv().unwrap();
        waiter.await.unwrap();
        assert_eq!(queued.get(), 0);
        // An item larger than the whole budget still fits into an empty queue.
        assert_eq!(o.push(frame("0123456789")), Ok(()));
        o.close();
        assert_eq!(queued.get(), 0);
    }
}
