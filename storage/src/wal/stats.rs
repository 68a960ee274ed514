//! Latency histograms the WAL keeps about itself (append-to-durable, fdatasync), lock-free so
//! recording costs the writer and syncer one atomic add.
//!
//! Buckets are log-linear: 8 per power of two of microseconds (one per microsecond below 8), so
//! a quantile read back is at most 12.5% above the true value, from 1 µs to about 9 hours.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB_BUCKETS: usize = 8;
/// Values below this many microseconds get a bucket each.
const LINEAR: u64 = 8;
/// Powers of two above `LINEAR`, each split into `SUB_BUCKETS`: up to 2^35 µs (~9.5 hours).
const POWERS: usize = 32;
const BUCKETS: usize = LINEAR as usize + POWERS * SUB_BUCKETS;

/// A histogram of durations.
pub struct LatencyHistogram {
    counts: [AtomicU64; BUCKETS],
    total_count: AtomicU64,
    total_micros: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            total_count: AtomicU64::new(0),
            total_micros: AtomicU64::new(0),
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
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        self.total_count.fetch_add(1, Ordering::Relaxed);
        self.total_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.total_count.load(Ordering::Relaxed)
    }

    pub fn mean(&self) -> Duration {
        let count = self.count();
        if count == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.total_micros.load(Ordering::Relaxed) / count)
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

    /// Cumulative counts at the bucket upper bounds (in microseconds) that hold values, for
    /// exporting as a Prometheus histogram.
    pub fn cumulative(&self) -> Vec<(u64, u64)> {
        let mut seen = 0;
        let mut out = Vec::new();
        for (index, count) in self.counts.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count > 0 {
                seen += count;
                out.push((upper_bound(index), seen));
            }
        }
        out
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
        assert_eq!(histogram.cumulative().last().map(|c| c.1), Some(1000));
    }
}
