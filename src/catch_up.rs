//! When a replica catches up: an estimate from how fast its distance to a moving target (the
//! leader's last tick) shrank lately. Used for the follower's applier state and for each client
//! in the leader's `logger-state`, and their metrics.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the estimate looks: long enough to smooth a few slow batches, short enough that
/// the end of a stall shows within seconds.
const WINDOW: Duration = Duration::from_secs(15);
/// Samples closer together than this are not kept (a busy follower notes hundreds a second).
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// An estimate needs samples at least this far apart.
const SPAN_MIN: Duration = Duration::from_secs(1);

/// Distances (ticks behind) noted over the last `WINDOW`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatchUpClock {
    samples: VecDeque<(Instant, u64)>,
}

impl CatchUpClock {
    /// Notes that the replica was `behind` ticks behind at `now`.
    pub fn note(&mut self, now: Instant, behind: u64) {
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > WINDOW)
        {
            self.samples.pop_front();
        }
        if self
            .samples
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= SAMPLE_EVERY)
        {
            self.samples.push_back((now, behind));
        }
    }

    /// Seconds until the replica, `behind` ticks behind at `now`, is level at the rate its
    /// distance shrank since the oldest sample of the window: 0 when level; `None` when it is
    /// not catching up (its distance held or grew: a stall, a partition, a leader writing
    /// faster than it applies) or too little is known.
    pub fn eta_seconds(&self, now: Instant, behind: u64) -> Option<f64> {
        if behind == 0 {
            return Some(0.0);
        }
        let (at, then) = self
            .samples
            .iter()
            .find(|(at, _)| now.saturating_duration_since(*at) <= WINDOW)?;
        let span = now.saturating_duration_since(*at);
        if span < SPAN_MIN || *then <= behind {
            return None;
        }
        let rate = (then - behind) as f64 / span.as_secs_f64();
        Some(behind as f64 / rate)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;

    // Goal: a replica closing its distance at a steady rate gets the time that rate needs; one
    // that holds or loses ground gets none; a level one gets 0; old samples stop counting.
    #[test]
    fn the_estimate_follows_the_rate_the_distance_shrinks() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut clock = CatchUpClock::default();
        // 10,000 behind, 1,000 ticks closer each second.
        for second in 0..=4u64 {
            clock.note(at(second * 1000), 10_000 - second * 1000);
        }
        let eta = clock.eta_seconds(at(4000), 6000).unwrap();
        assert!((eta - 6.0).abs() < 1e-9, "{eta}");
        assert_eq!(clock.eta_seconds(at(4000), 0), Some(0.0));
        // Holding or losing ground: no estimate.
        assert_eq!(clock.eta_seconds(at(4000), 10_000), None);
        assert_eq!(clock.eta_seconds(at(4000), 12_000), None);
        // Too short a span.
        let mut young = CatchUpClock::default();
        young.note(at(0), 100);
        assert_eq!(young.eta_seconds(at(500), 50), None);
        // Samples past the window are dropped: a stall of 20 s then a fast second.
        let mut stalled = CatchUpClock::default();
        stalled.note(at(0), 5000);
        stalled.note(at(20_000), 5000);
        stalled.note(at(21_000), 4000);
        let eta = stalled.eta_seconds(at(21_000), 4000).unwrap();
        assert!((eta - 4.0).abs() < 1e-9, "{eta}");
        // Dense notes keep one sample per half second.
        let mut dense = CatchUpClock::default();
        for ms in 0..1000 {
            dense.note(at(ms), 1000 - ms);
        }
        assert_eq!(dense.samples.len(), 2);
    }
}
