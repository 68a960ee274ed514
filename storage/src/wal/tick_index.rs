//! Map from tick to (segment, offset), in O(log n) at both levels.
//!
//! Segments are found by binary search over their first ticks (the WAL keeps them in order).
//! Inside a segment, every block has one entry (tick_first, segment_offset): the active segment
//! keeps its entries in memory (`TickIndex`), a sealed segment keeps them in its seal block on
//! disk, read through the segment's mapping (`SealedIndex`), so the memory the index needs is
//! bounded by one segment however long the log is.
//!
//! A lookup answers "the last block whose first tick is <= t"; a reader that wants the ticks
//! after `t` starts there and skips that block if it ends at or before `t`.

use crate::tick::Tick;
use crate::wal::segment::{index_entry, INDEX_ENTRY_BYTES};

/// In-memory block index of the active segment; entries strictly increase in tick and offset.
#[derive(Clone, Debug, Default)]
pub struct TickIndex {
    entries: Vec<(Tick, u64)>,
}

impl TickIndex {
    pub fn new() -> TickIndex {
        TickIndex::default()
    }

    pub fn push(&mut self, tick_first: Tick, segment_offset: u64) {
        if let Some(&(tick, offset)) = self.entries.last() {
            assert!(tick_first > tick, "index ticks must increase");
            assert!(segment_offset > offset, "index offsets must increase");
        }
        self.entries.push((tick_first, segment_offset));
    }

    pub fn extend_from(&mut self, other: &[(Tick, u64)]) {
        for &(tick, offset) in other {
            self.push(tick, offset);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[(Tick, u64)] {
        &self.entries
    }

    /// The last entry whose tick is `<= tick`.
    pub fn floor(&self, tick: Tick) -> Option<(Tick, u64)> {
        let after = self.entries.partition_point(|&(t, _)| t <= tick);
        after.checked_sub(1).map(|i| self.entries[i])
    }
}

/// A sealed segment's block index: its seal block's payload, 16 bytes per entry.
#[derive(Clone, Copy)]
pub struct SealedIndex<'a> {
    bytes: &'a [u8],
}

impl<'a> SealedIndex<'a> {
    pub fn new(bytes: &'a [u8]) -> SealedIndex<'a> {
        debug_assert_eq!(bytes.len() % INDEX_ENTRY_BYTES, 0);
        SealedIndex { bytes }
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / INDEX_ENTRY_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn get(&self, i: usize) -> (Tick, u64) {
        let (tick, offset) =
            index_entry(&self.bytes[i * INDEX_ENTRY_BYTES..(i + 1) * INDEX_ENTRY_BYTES]);
        (Tick::new(tick), offset)
    }

    /// The last entry whose tick is `<= tick`.
    pub fn floor(&self, tick: Tick) -> Option<(Tick, u64)> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            if self.get(mid).0 <= tick {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low.checked_sub(1).map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        // Goal: both index forms answer `floor` exactly as a BTreeMap model does, for ticks
        // before, inside, between and after the indexed blocks.
        #[test]
        fn floor_matches_btreemap_model(
            gaps in proptest::collection::vec((1u64..50, 1u64..5000), 0..200),
            probes in proptest::collection::vec(0u64..20_000, 1..100),
        ) {
            let mut model = BTreeMap::new();
            let mut index = TickIndex::new();
            let mut sealed = Vec::new();
            let (mut tick, mut offset) = (0u64, 64u64);
            for (tick_gap, offset_gap) in gaps {
                tick += tick_gap;
                offset += offset_gap;
                model.insert(tick, offset);
                index.push(Tick::new(tick), offset);
                sealed.extend_from_slice(&tick.to_le_bytes());
                sealed.extend_from_slice(&offset.to_le_bytes());
            }
            let sealed = SealedIndex::new(&sealed);
            prop_assert_eq!(sealed.len(), model.len());
            for probe in probes {
                let expected = model.range(..=probe).next_back().map(|(&t, &o)| (Tick::new(t), o));
                prop_assert_eq!(index.floor(Tick::new(probe)), expected);
                prop_assert_eq!(sealed.floor(Tick::new(probe)), expected);
            }
        }
    }

    // Goal: an index refuses entries out of order instead of answering wrongly later.
    #[test]
    #[should_panic(expected = "index ticks must increase")]
    fn out_of_order_push_panics() {
        let mut index = TickIndex::new();
        index.push(Tick::new(10), 64);
        index.push(Tick::new(10), 128);
    }
}
