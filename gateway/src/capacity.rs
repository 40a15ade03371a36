//! Admission: WebSocket connections and event streams share one `--max-connections` budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;

/// Open WebSocket connections and event streams, against the gateway's limit.
pub(crate) struct Capacity {
    open: AtomicUsize,
    max: usize,
}

/// One admitted connection. Dropping it (also while a panicking task unwinds) gives its place back
/// and decrements its gauge, so no exit path leaks a place.
pub(crate) struct Slot {
    capacity: Arc<Capacity>,
    gauge: Gauge,
}

impl Capacity {
    /// Room for `max` connections.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A place for one more connection, counted in `gauge`; `None` at capacity.
    pub(crate) fn admit(self: &Arc<Self>, gauge: &Gauge) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        gauge.inc();
        Some(Slot {
            capacity: self.clone(),
            gauge: gauge.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
        self.capacity.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back_on_drop() {
        let capacity = Capacity::new(2);
        let gauge = Gauge::default();
        let a = capacity.admit(&gauge).expect("first");
        let _b = capacity.admit(&gauge).expect("second");
        assert!(capacity.admit(&gauge).is_none());
        assert_eq!(gauge.get(), 2);
        drop(a);
        assert_eq!(gauge.get(), 1);
        assert!(capacity.admit(&gauge).is_some());
    }
}
