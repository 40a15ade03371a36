//! A connection's bounded outbound queue and its close request, in one small allocation.
//!
//! The fan-out pushes shared frames with [`Outbox::push`], which never waits: a full queue is the
//! slow-consumer signal. The connection task (WebSocket or SSE) is the only reader. An idle
//! connection's outbox costs about two hundred bytes: the queue allocates only while frames wait,
//! which matters at tens of thousands of idle connections per gateway (a tokio mpsc channel
//! allocates a 32-slot block up front, and a cancellation token another node).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What travels through a connection's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// One frame (a live message).
    Frame(Utf8Bytes),
    /// Frames that must be written in order without interleaving: a `subscribed` reply followed by
    /// the replayed messages. One queue slot, so a long replay cannot overflow the queue.
    Batch(Vec<Utf8Bytes>),
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its capacity: the reader is too slow.
    Full,
    /// The connection is gone.
    Closed,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    closed: bool,
}

/// A bounded single-reader queue plus a close request.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Signals the reader that an item (or the close) arrived.
    ready: Notify,
    /// The close code requested (0: none); the first request wins.
    kick: AtomicU16,
    kicked: Notify,
    capacity: usize,
}

/// Queue capacity kept after a burst drained; more is released, so a connection that once lagged
/// does not hold its peak forever.
const KEEP_CAPACITY: usize = 16;

impl Outbox {
    /// An empty outbox that holds at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::default(),
            ready: Notify::new(),
            kick: AtomicU16::new(0),
            kicked: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The lock guards plain data and no code panics while holding it.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` without waiting.
    pub fn push(&self, item: Outbound) -> Result<(), Refused> {
        {
            let mut q = self.lock();
            if q.closed {
                return Err(Refused::Closed);
            }
            if q.items.len() >= self.capacity {
                return Err(Refused::Full);
            }
            q.items.push_back(item);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next item, if one is queued.
    pub fn try_recv(&self) -> Option<Outbound> {
        let mut q = self.lock();
        let item = q.items.pop_front();
        if q.items.is_empty() && q.items.capacity() > KEEP_CAPACITY {
            q.items.shrink_to(KEEP_CAPACITY);
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
        let mut q = self.lock();
        q.closed = true;
        q.items = VecDeque::new();
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
        let o = Outbox::new(2);
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
        let o = std::sync::Arc::new(Outbox::new(4));
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
        let o = Outbox::new(256);
        for _ in 0..100 {
            o.push(frame("x")).unwrap();
        }
        while o.try_recv().is_some() {}
        assert!(o.lock().items.capacity() <= KEEP_CAPACITY);
    }
}
