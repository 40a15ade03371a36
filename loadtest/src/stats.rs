//! Latency histograms that travel between processes and merge exactly.
//!
//! Workers ship each histogram as its recorded buckets ([`Buckets`]); re-recording a bucket's
//! value into a histogram of the same precision lands in the same bucket, so the merged
//! percentiles are those of one histogram that had seen every sample.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency tracked, in microseconds (10 minutes); larger samples are clamped to it.
const MAX_MICROS: u64 = 600_000_000;

/// A histogram of microseconds with three significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Static, valid bounds: 1 <= low, high >= 2 * low, sigfig <= 5.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid")
}

/// Records a sample of `micros`, clamped into the tracked range.
pub(crate) fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.clamp(1, MAX_MICROS));
}

/// A histogram's recorded buckets: `(value, count)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Buckets(pub(crate) Vec<(u64, u64)>);

impl Buckets {
    /// The recorded buckets of `h`.
    pub(crate) fn of(h: &Histogram<u64>) -> Buckets {
        Buckets(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these buckets to `h`.
    pub(crate) fn add_to(&self, h: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            h.saturating_record_n(value.clamp(1, MAX_MICROS), count);
        }
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Latency {
    /// Samples.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50_ms: f64,
    /// 90th percentile.
    pub(crate) p90_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// 99.9th percentile.
    pub(crate) p999_ms: f64,
    /// Largest sample.
    pub(crate) max_ms: f64,
    /// Mean.
    pub(crate) mean_ms: f64,
}

impl Latency {
    /// The percentiles of `h` (all zero when it is empty).
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_shipped_buckets_equals_one_histogram_of_all_samples() {
        let mut whole = new_histogram();
        let mut merged = new_histogram();
        // Three "workers" with different latency profiles.
        for worker in 0..3u64 {
            let mut h = new_histogram();
            for i in 0..10_000u64 {
                let v = 100 + (i * 37 + worker * 1_000_003) % (50_000 * (worker + 1));
                record(&mut h, v);
                record(&mut whole, v);
            }
            let shipped: Buckets =
                serde_json::from_str(&serde_json::to_string(&Buckets::of(&h)).unwrap()).unwrap();
            shipped.add_to(&mut merged);
        }
        assert_eq!(merged.len(), whole.len());
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                merged.value_at_quantile(q),
                whole.value_at_quantile(q),
                "q={q}"
            );
        }
        assert_eq!(Latency::of(&merged), Latency::of(&whole));
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_lost() {
        let mut h = new_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
    }
}
