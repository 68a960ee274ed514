//! The coordinates of the log: ticks, inclusive tick ranges and segment ids.
//!
//! A **tick** is the position of one logged operation (one record). Ticks are strictly increasing
//! and never reused. Inside a block the ticks of its records are consecutive; between blocks there
//! may be gaps (a follower whose log starts at a snapshot tick, for example). `Tick::ZERO` is
//! "before everything": no record ever has tick 0, so "after tick 0" means "from the beginning".
//! In JSON a tick is a decimal string, because it may exceed the precision of an IEEE-754 double.
//!
//! The named positions, each a tick, and their order (asserted wherever they change):
//!
//! - on the leader, `tick_synced <= tick_written`: written means handed to the kernel, synced
//!   means made durable by fdatasync. With the default sync policy both advance together.
//! - per follower, `tick_acked <= tick_shipped`: shipped means sent, acked means the follower
//!   reported it durable.
//! - on the follower, `tick_applied <= tick_received`: received means durable in the follower's
//!   own WAL, applied means visible in its document store.
//!
//! A **segment id** is the sequence number of a segment file (0, 1, 2, ...), not a tick: segment
//! files are named by both, see `wal::segment`.

use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

/// Position of one entry in the replicated log: strictly increasing, never reused, not a byte count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(u64);

impl Tick {
    /// Before every record: no record has tick 0.
    pub const ZERO: Tick = Tick(0);
    /// The largest tick; appending past it is refused rather than wrapped.
    pub const MAX: Tick = Tick(u64::MAX);

    pub const fn new(value: u64) -> Tick {
        Tick(value)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The tick after this one, or `None` at `Tick::MAX`.
    pub fn checked_next(self) -> Option<Tick> {
        self.0.checked_add(1).map(Tick)
    }

    /// `self + count`, or `None` on overflow.
    pub fn checked_add(self, count: u64) -> Option<Tick> {
        self.0.checked_add(count).map(Tick)
    }

    /// The tick before this one; `Tick::ZERO` stays `Tick::ZERO`.
    pub fn saturating_prev(self) -> Tick {
        Tick(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Tick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Tick {
    type Err = ParseIntError;

    /// Parses the decimal form that ticks take in JSON and HTTP headers.
    fn from_str(s: &str) -> Result<Tick, ParseIntError> {
        s.parse::<u64>().map(Tick)
    }
}

impl From<u64> for Tick {
    fn from(value: u64) -> Tick {
        Tick(value)
    }
}

/// Ticks `first..=last`, inclusive at both ends; never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TickRange {
    pub first: Tick,
    pub last: Tick,
}

impl TickRange {
    /// The range `first..=last`.
    ///
    /// # Panics
    /// If `last < first`: an empty range is not a `TickRange` (use `Option<TickRange>`).
    pub fn new(first: Tick, last: Tick) -> TickRange {
        assert!(first <= last, "tick range {first}..={last} is empty");
        TickRange { first, last }
    }

    /// `count` consecutive ticks starting at `first`, or `None` if they would overflow or
    /// `count` is zero.
    pub fn with_count(first: Tick, count: u64) -> Option<TickRange> {
        let last = first.checked_add(count.checked_sub(1)?)?;
        Some(TickRange { first, last })
    }

    /// How many ticks the range covers.
    pub fn count(self) -> u64 {
        self.last.0 - self.first.0 + 1
    }

    pub fn contains(self, tick: Tick) -> bool {
        self.first <= tick && tick <= self.last
    }
}

impl fmt::Display for TickRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.first, self.last)
    }
}

/// Sequence number of a segment file, not a tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(u64);

impl SegmentId {
    pub const fn new(value: u64) -> SegmentId {
        SegmentId(value)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The id of the segment that follows this one.
    ///
    /// # Panics
    /// At `u64::MAX`, which 64 MiB segments would reach after a zettabyte of log.
    pub fn next(self) -> SegmentId {
        SegmentId(self.0.checked_add(1).expect("segment id overflow"))
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: ticks print and parse in the decimal form JSON uses, including values a double
    // cannot hold exactly.
    #[test]
    fn tick_decimal_round_trip() {
        for value in [0, 1, 37_276_350, (1 << 53) + 1, u64::MAX] {
            let tick = Tick::new(value);
            assert_eq!(tick.to_string().parse::<Tick>(), Ok(tick));
        }
        assert!("-1".parse::<Tick>().is_err());
        assert!("18446744073709551616".parse::<Tick>().is_err());
    }

    // Goal: ranges are inclusive at both ends and refuse to be empty or to overflow.
    #[test]
    fn range_is_inclusive() {
        let range = TickRange::new(Tick::new(5), Tick::new(7));
        assert_eq!(range.count(), 3);
        assert!(range.contains(Tick::new(5)));
        assert!(range.contains(Tick::new(7)));
        assert!(!range.contains(Tick::new(8)));
        assert_eq!(TickRange::with_count(Tick::new(5), 3), Some(range));
        assert_eq!(TickRange::with_count(Tick::new(5), 0), None);
        assert_eq!(TickRange::with_count(Tick::MAX, 2), None);
        assert_eq!(
            TickRange::with_count(Tick::MAX, 1).map(TickRange::count),
            Some(1)
        );
    }
}
