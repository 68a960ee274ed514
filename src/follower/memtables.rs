//! Which memtables the follower's store uses: small tailing ones while it keeps up, the
//! catch-up budget while it is far behind, with a gap between the two thresholds.

use super::*;

/// Ticks behind the leader past which a tailing follower switches to its catch-up memtables
/// (`DocStore::set_tailing`), and below which it switches back. Apart, so that a follower near
/// either one does not switch at every frame.
pub(super) const FAR_BEHIND_TICKS: u64 = 64 << 10;
pub(super) const CAUGHT_UP_TICKS: u64 = 8 << 10;

/// Whether a follower `behind` ticks behind its leader should have tailing memtables (`None`:
/// keep what it has).
pub(super) fn tailing_at(behind: u64) -> Option<bool> {
    if behind >= FAR_BEHIND_TICKS {
        Some(false)
    } else if behind < CAUGHT_UP_TICKS {
        Some(true)
    } else {
        None
    }
}
impl Applier {
    /// `why` is called only when the size changes (this runs for every frame).
    pub(super) fn size_memtables(&self, tailing: bool, why: impl FnOnce() -> String) {
        match self.node.store.set_tailing(tailing) {
            Ok(true) => tracing::info!(
                "replication: memtables of {} bytes ({})",
                self.node.store.write_buffer_bytes(),
                why()
            ),
            Ok(false) => {}
            // The old size stays; applying goes on.
            Err(e) => tracing::warn!("replication: cannot resize the memtables: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memtables_switch_with_a_gap_between_far_and_near() {
        assert_eq!(tailing_at(0), Some(true));
        assert_eq!(tailing_at(CAUGHT_UP_TICKS - 1), Some(true));
        assert_eq!(tailing_at(CAUGHT_UP_TICKS), None);
        assert_eq!(tailing_at(FAR_BEHIND_TICKS - 1), None);
        assert_eq!(tailing_at(FAR_BEHIND_TICKS), Some(false));
        assert_eq!(tailing_at(u64::MAX), Some(false));
    }
}
