//! Heap allocations on the fan-out's hot path, counted by a counting global allocator.
//!
//! ```sh
//! cargo run --release -p chatfabric-gateway --example alloc_per_delivery
//! ```
//!
//! Per message (once, whatever the fan-out): parsing the stored message a stream delivers and
//! encoding its `msg` frame, as the conversation actor does. Per delivery: pushing the shared frame
//! to each member's outbox, which writes it to the socket with one non-blocking write when nothing
//! is queued (1,000 loopback connections, readers draining on other threads). Only the measuring
//! thread's allocations count, so the readers' and the runtime's do not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chatfabric_gateway::outbox::{Outbound, Outbox};
use chatfabric_gateway::protocol::encode_msg;
use chatfabric_nats::wire::StoredMessage;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Utf8Bytes;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTED.with(|c| c.set(true));
    let out = f();
    COUNTED.with(|c| c.set(false));
    (out, ALLOCATIONS.load(Ordering::Relaxed) - before)
}

const CONNECTIONS: usize = 1000;
const ROUNDS: usize = 200;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A stored message as a stream delivers it (~100-byte body, as the delivery benchmark's).
    let stored = serde_json::to_vec(&serde_json::json!({
        "id": "01JDQ8Z3M6V4W2N7P5R8T0Y1XK",
        "conv": "g-1f0c2a9e4b7d4c1e",
        "sender": "user-0042",
        "client_id": "c-0042-000123",
        "ts": 1_796_140_000_000u64,
        "body": "x".repeat(100),
    }))?;
    let (_, per_message) = counted(|| {
        for seq in 1..=ROUNDS as u64 {
            let m: StoredMessage = serde_json::from_slice(&stored).expect("a stored message");
            let frame = Utf8Bytes::from(encode_msg(&m, seq, seq - 1));
            std::hint::black_box(frame);
        }
    });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut outboxes = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut client = tokio::net::TcpStream::connect(addr).await?;
        let (server, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = [0u8; 16 * 1024];
            while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let queued = Gauge::default();
        outboxes.push(Outbox::for_socket(Arc::new(server), 256, 2 << 20, queued));
    }
    let frame = Utf8Bytes::from(encode_msg(&serde_json::from_slice(&stored)?, 1, 0));
    let (mut allocations, mut deliveries) = (0, 0);
    for round in 0..ROUNDS {
        let (pushed, n) = counted(|| {
            outboxes
                .iter()
                .map(|o| o.push(Outbound::Frame(frame.clone())).is_ok())
                .filter(|ok| *ok)
                .count()
        });
        // The first rounds warm the queues up; then count.
        if round >= 10 {
            allocations += n;
            deliveries += pushed;
        }
        // Let the readers drain the sockets, so the next round writes through again.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    println!(
        "per message (parse the stored message, encode its frame): {:.1} allocations",
        per_message as f64 / ROUNDS as f64
    );
    println!(
        "per delivery (push the shared frame to a socket outbox): {:.3} allocations over \
         {deliveries} deliveries ({} refused)",
        allocations as f64 / deliveries.max(1) as f64,
        (ROUNDS - 10) * CONNECTIONS - deliveries
    );
    Ok(())
}
