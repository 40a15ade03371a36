//! A connection's bounded outbound queue and its close request, in one small allocation.
//!
//! The fan-out pushes shared frames with [`Outbox::push`], which never waits: a full queue is the
//! slow-consumer signal. A WebSocket connection's outbox owns the socket's write side
//! ([`Outbox::for_socket`]): when nothing is queued, a push writes the frame straight to the
//! socket with one non-blocking vectored write from the fan-out's task (no copy, no wake-up of
//! the connection task); only what the socket does not take is queued, and the connection task
//! writes it when the socket is writable ([`Outbox::flush_some`]). Every write happens under the
//! queue's lock and in queue order, so frames never interleave or reorder. The queue is bounded twice: in items (`--queue`) and in bytes
//! (`--queue-bytes`), so neither many small frames nor a few large ones can grow a connection's
//! memory past its budget. Replays do not push past [`Outbox::has_room`] (half the budget): they
//! wait for [`Outbox::room`], so a long resume streams at the reader's pace and leaves the other
//! half to live traffic. The connection task (WebSocket or SSE) is the only reader. An idle
//! connection's outbox costs about two hundred bytes: the queue allocates only while frames wait,
//! which matters at tens of thousands of idle connections per gateway (a tokio mpsc channel
//! allocates a 32-slot block up front, and a cancellation token another node).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::sync::Notify;

mod outbound;
mod wire;

pub use outbound::Outbound;

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
    /// Socket mode: the bytes of the first item already written.
    written: usize,
    /// Socket mode: a write failed; the connection is gone.
    failed: bool,
    /// Socket mode: the replies among `items`.
    replies: usize,
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
    /// The WebSocket this outbox writes to; `None` for an event stream, whose task reads the queue.
    socket: Option<Arc<TcpStream>>,
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
            socket: None,
        }
    }

    /// An outbox that writes WebSocket frames to `socket` itself (see the module doc).
    pub fn for_socket(
        socket: Arc<TcpStream>,
        capacity: usize,
        max_bytes: usize,
        queued: Gauge,
    ) -> Self {
        let mut outbox = Self::new(capacity, max_bytes, queued);
        outbox.socket = Some(socket);
        outbox
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The lock guards plain data and no code panics while holding it.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` without waiting (on a WebSocket with nothing queued: writes it).
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
            match self.write_through(&mut q, item) {
                None => return Ok(()),
                // The write found the connection gone.
                Some(_) if q.failed => return Err(Refused::Closed),
                Some(item) => q.items.push_back(item),
            }
            q.bytes += size;
        }
        self.queued.inc_by(size as i64);
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a reply or tungstenite's own bytes (WebSocket only): never refused while the
    /// connection lives, also after [`close`](Self::close) (the close frame follows the data).
    pub fn push_unbounded(&self, item: Outbound) -> io::Result<()> {
        {
            let mut q = self.lock();
            if q.failed {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            match self.write_through(&mut q, item) {
                None => return Ok(()),
                Some(_) if q.failed => return Err(io::ErrorKind::BrokenPipe.into()),
                Some(item) => {
                    q.replies += usize::from(matches!(item, Outbound::Reply(_)));
                    q.items.push_back(item);
                }
            }
        }
        self.ready.notify_one();
        Ok(())
    }

    /// With nothing queued on a socket, writes `item` now; gives back what still has to be
    /// queued (with `written` set to the part that went out).
    fn write_through(&self, q: &mut Queue, item: Outbound) -> Option<Outbound> {
        let Some(socket) = &self.socket else {
            return Some(item);
        };
        if !q.items.is_empty() || q.failed {
            return Some(item);
        }
        match wire::write_item(&item, |s| socket.try_write_vectored(s)) {
            Ok(n) if n == wire::wire_len(&item) => None,
            Ok(n) => {
                q.written = n;
                Some(item)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                q.written = 0;
                Some(item)
            }
            Err(_) => {
                q.failed = true;
                q.closed = true;
                // The connection task learns of it in `flush_some`.
                self.ready.notify_one();
                Some(item)
            }
        }
    }

    /// Whether a reply is still queued (WebSocket): the connection reads no further request
    /// until it went out, which pushes back on a client that does not read.
    pub fn reply_queued(&self) -> bool {
        self.lock().replies > 0
    }

    /// Waits until the socket is writable and something is queued, and writes what it takes
    /// (WebSocket only). Fails once the socket does.
    pub async fn flush_some(&self) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return std::future::pending().await;
        };
        loop {
            let ready = self.ready.notified();
            let (failed, empty) = {
                let q = self.lock();
                (q.failed, q.items.is_empty())
            };
            if failed {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            if empty {
                ready.await;
                continue;
            }
            socket.writable().await?;
            if self.write_queued(socket)? {
                return Ok(());
            }
        }
    }

    /// Writes what is queued until nothing is (WebSocket only).
    pub async fn flush_all(&self) -> io::Result<()> {
        while !self.lock().items.is_empty() {
            self.flush_some().await?;
        }
        Ok(())
    }

    /// One vectored write of the queue's head; whether it made progress.
    fn write_queued(&self, socket: &TcpStream) -> io::Result<bool> {
        let (freed, room) = {
            let mut q = self.lock();
            let written =
                match wire::write_gathered(&q.items, q.written, |s| socket.try_write_vectored(s)) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => {
                        q.failed = true;
                        q.closed = true;
                        return Err(e);
                    }
                };
            let mut done = q.written + written;
            let mut freed = 0;
            while let Some(first) = q.items.front() {
                let len = wire::wire_len(first);
                if done < len {
                    break;
                }
                done -= len;
                freed += first.size();
                q.replies -= usize::from(matches!(first, Outbound::Reply(_)));
                q.items.pop_front();
            }
            q.written = done;
            q.bytes -= freed;
            if q.items.is_empty() && q.items.capacity() > KEEP_CAPACITY {
                q.items.shrink_to(KEEP_CAPACITY);
            }
            (
                freed,
                q.items.len() <= self.capacity / 2 && q.bytes <= self.max_bytes / 2,
            )
        };
        if freed > 0 {
            self.queued.dec_by(freed as i64);
            if room {
                self.drained.notify_waiters();
            }
        }
        Ok(true)
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

    /// Refuses further pushes and drops what is queued (the reader is leaving), except a frame
    /// the socket has taken part of: the rest of it still has to go, or the stream breaks.
    pub fn close(&self) {
        let dropped = {
            let mut q = self.lock();
            q.closed = true;
            let started = if q.written > 0 {
                q.items.pop_front()
            } else {
                None
            };
            let kept = started.as_ref().map_or(0, Outbound::size);
            q.replies = usize::from(matches!(started, Some(Outbound::Reply(_))));
            q.items = started.into_iter().collect();
            let dropped = q.bytes - kept;
            q.bytes = kept;
            dropped
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

impl Drop for Outbox {
    fn drop(&mut self) {
        let q = self.queue.get_mut().unwrap_or_else(|p| p.into_inner());
        self.queued.dec_by(q.bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

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
