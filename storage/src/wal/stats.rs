//! Latency histograms the WAL keeps about itself (append-to-durable, fdatasync), lock-free so
//! recording costs the writer and syncer one atomic add.
//!
//! Buckets are log-linear: 8 per power of two of microseconds (one per microsecond below 8), so
//! a quantile read back is at most 12.5% above the true value, from 1 µs to about 9 hours.
//! Exports to Prometheus use a second, fixed set of bounds ([`EXPORT_BOUNDS_SECONDS`]) counted
//! exactly, so that every scrape of every server has the same `le` values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB_BUCKETS: usize = 8;
/// Values below this many microseconds get a bucket each.
const LINEAR: u64 = 8;
/// Powers of two above `LINEAR`, each split into `SUB_BUCKETS`: up to 2^35 µs (~9.5 hours).
const POWERS: usize = 32;
const BUCKETS: usize = LINEAR as usize + POWERS * SUB_BUCKETS;

/// The `le` bounds of the exported histogram, in seconds: the same for every histogram, scrape
/// and server, so that `rate()` and `sum by (le)` across instances are meaningful.
pub const EXPORT_BOUNDS_SECONDS: [f64; 18] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// `EXPORT_BOUNDS_SECONDS` in nanoseconds.
const EXPORT_BOUNDS_NANOS: [u64; 18] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// A histogram of durations.
pub struct LatencyHistogram {
    counts: [AtomicU64; BUCKETS],
    /// Values at most `EXPORT_BOUNDS_NANOS[i]` and above the bound before; the last counts
    /// the values above every bound.
    export_counts: [AtomicU64; EXPORT_BOUNDS_NANOS.len() + 1],
    total_count: AtomicU64,
    total_nanos: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            export_counts: std::array::from_fn(|_| AtomicU64::new(0)),
            total_count: AtomicU64::new(0),
            total_nanos: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

/// The bucket of a value in microseconds.
fn bucket(micros: u64) -> usize {
    if micros < LINEAR {
        return micros as usize;
    }
    let power = 63 - micros.leading_zeros() as usize;
    // The 3 bits below the leading one select the sub-bucket.
    let sub = (micros >> (power - 3)) as usize & (SUB_BUCKETS - 1);
    (LINEAR as usize + (power - 3) * SUB_BUCKETS + sub).min(BUCKETS - 1)
}

/// The (exclusive) upper bound, in microseconds, of bucket `index`.
fn upper_bound(index: usize) -> u64 {
    if index < LINEAR as usize {
        return index as u64 + 1;
    }
    let (power, sub) = (
        3 + (index - LINEAR as usize) / SUB_BUCKETS,
        (index - LINEAR as usize) % SUB_BUCKETS,
    );
    let base = 1u64 << power;
    base + (base / SUB_BUCKETS as u64) * (sub as u64 + 1)
}

impl LatencyHistogram {
    pub fn record(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket(nanos / 1000)].fetch_add(1, Ordering::Relaxed);
        let export = EXPORT_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.export_counts[export].fetch_add(1, Ordering::Relaxed);
        self.total_count.fetch_add(1, Ordering::Relaxed);
        self.total_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The sum of every value recorded, exactly (to the nanosecond).
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.total_nanos.load(Ordering::Relaxed))
    }

    /// Cumulative counts at each of `EXPORT_BOUNDS_SECONDS` (values at most that bound), for a
    /// Prometheus histogram; `+Inf` is `count()`.
    pub fn exported(&self) -> [(f64, u64); EXPORT_BOUNDS_SECONDS.len()] {
        let mut seen = 0;
        std::array::from_fn(|i| {
            seen += self.export_counts[i].load(Ordering::Relaxed);
            (EXPORT_BOUNDS_SECONDS[i], seen)
        })
    }

    pub fn count(&self) -> u64 {
        self.total_count.load(Ordering::Relaxed)
    }

    pub fn mean(&self) -> Duration {
        let count = self.count();
        if count == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.total_nanos.load(Ordering::Relaxed) / count)
    }

    /// The value at quantile `q` (0..=1), as the upper bound of its bucket.
    pub fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_micros(upper_bound(index));
            }
        }
        Duration::from_micros(upper_bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: every value lands in the bucket [upper bound of the one before, its upper bound),
    // whose upper bound is within ~13% of it, and quantiles come back in order.
    #[test]
    fn buckets_bound_values_tightly() {
        for micros in (1..100_000u64)
            .step_by(7)
            .chain([1 << 20, (1 << 30) + 12345])
        {
            let index = bucket(micros);
            let upper = upper_bound(index);
            assert!(upper > micros, "{micros} -> bucket {index} up to {upper}");
            assert!(
                upper as f64 <= micros as f64 * 1.13 + 1.0,
                "{micros} -> {upper}"
            );
            if index > 0 {
                assert!(
                    upper_bound(index - 1) <= micros,
                    "{micros} belongs in a lower bucket"
                );
            }
        }
        let histogram = LatencyHistogram::default();
        for micros in 1..=1000u64 {
            histogram.record(Duration::from_micros(micros));
        }
        assert_eq!(histogram.count(), 1000);
        let p50 = histogram.quantile(0.5).as_micros() as f64;
        let p99 = histogram.quantile(0.99).as_micros() as f64;
        assert!((500.0..=565.0).contains(&p50), "{p50}");
        assert!((990.0..=1120.0).contains(&p99), "{p99}");
    }

    // Goal: the exported buckets are the fixed bounds whatever was recorded, cumulative, each
    // counting exactly the values at most its bound; the sum is exact.
    #[test]
    fn export_has_fixed_bounds_and_an_exact_sum() {
        let histogram = LatencyHistogram::default();
        let empty = histogram.exported();
        assert!(empty.iter().all(|&(_, count)| count == 0));
        for nanos in [50_000, 50_001, 999_999, 1_000_000, 31_000_000_000] {
            histogram.record(Duration::from_nanos(nanos));
        }
        let exported = histogram.exported();
        assert_eq!(
            exported.map(|(bound, _)| bound),
            empty.map(|(bound, _)| bound)
        );
        let at = |bound: f64| exported.iter().find(|e| e.0 == bound).map(|e| e.1);
        assert_eq!(at(0.00005), Some(1));
        assert_eq!(at(0.0001), Some(2));
        assert_eq!(at(0.001), Some(4));
        assert_eq!(at(30.0), Some(4));
        assert_eq!(histogram.count(), 5);
        assert_eq!(
            histogram.sum(),
            Duration::from_nanos(50_000 + 50_001 + 999_999 + 1_000_000 + 31_000_000_000)
        );
        assert!(exported
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }
}
