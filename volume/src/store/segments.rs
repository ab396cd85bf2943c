//! [`Segments`]: a list of lazily filled slots that grows in place, so the checksum table of a
//! volume can grow while reads and writes use it, with no lock and no slot ever moved.
//!
//! The slots live in segments that double in size: segment 0 holds the first `first` slots,
//! segment `i > 0` the `first << (i - 1)` slots from index `first << (i - 1)`. Growing creates
//! the segments the new length needs; a slot's segment and place follow from its index with a
//! shift, so a lookup costs two loads. At most twice the slots needed are ever allocated.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most segments a list has: room for `first << (SEGMENTS_MAX - 1)` slots, enough for the
/// largest volume's checksum pages when `first` is 1.
pub const SEGMENTS_MAX: usize = 32;

/// Slots `0..len` of `T`, each filled at most once.
pub struct Segments<T> {
    /// Slots in segment 0; at least 1.
    first: u64,
    len: AtomicU64,
    segments: [OnceLock<Box<[OnceLock<T>]>>; SEGMENTS_MAX],
}

impl<T> Segments<T> {
    /// A list of `len` empty slots.
    pub fn new(len: u64) -> Self {
        let list = Segments {
            first: len.max(1),
            len: AtomicU64::new(0),
            segments: std::array::from_fn(|_| OnceLock::new()),
        };
        list.grow(len);
        list
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Makes slots `len()..len` exist (empty). Slots in use are untouched: a reader holding one
    /// keeps it. Callers serialise their grows; readers need not.
    pub fn grow(&self, len: u64) {
        let have = self.len();
        assert!(len >= have, "a list grows only: {have} to {len}");
        if len > 0 {
            let (last, _) = self.place(len - 1);
            for segment in 0..=last {
                self.segments[segment].get_or_init(|| {
                    (0..self.capacity(segment))
                        .map(|_| OnceLock::new())
                        .collect()
                });
            }
        }
        self.len.store(len, Ordering::Release);
    }

    /// The slot at `index`, which must be below `len()`.
    pub fn slot(&self, index: u64) -> &OnceLock<T> {
        assert!(index < self.len(), "slot {index} of {}", self.len());
        let (segment, at) = self.place(index);
        let slots = self.segments[segment]
            .get()
            .expect("a segment exists before its slots are in the list");
        &slots[at as usize]
    }

    /// Slots segment `segment` holds.
    fn capacity(&self, segment: usize) -> u64 {
        match segment {
            0 => self.first,
            s => self.first << (s - 1),
        }
    }

    /// The segment holding slot `index`, and its place there.
    fn place(&self, index: u64) -> (usize, u64) {
        if index < self.first {
            return (0, index);
        }
        // Segment `i > 0` starts at `first << (i - 1)`: `i` is one more than the highest bit
        // of `index / first`.
        let segment = (u64::BITS - (index / self.first).leading_zeros()) as usize;
        assert!(segment < SEGMENTS_MAX, "slot {index} is past every segment");
        (segment, index - (self.first << (segment - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_one_place_and_grown_slots_keep_their_contents() {
        for first in [1u64, 3, 512] {
            let list: Segments<u64> = Segments::new(first);
            for i in 0..first {
                list.slot(i).set(i).unwrap();
            }
            list.grow(first * 9 + 5);
            let mut seen = std::collections::HashSet::new();
            for i in 0..list.len() {
                let (s, at) = list.place(i);
                assert!(at < list.capacity(s), "first {first}: slot {i}");
                assert!(
                    seen.insert((s, at)),
                    "first {first}: slot {i} shares a place"
                );
                match list.slot(i).get() {
                    Some(&v) => assert!(i < first && v == i, "first {first}: slot {i} = {v}"),
                    None => assert!(i >= first, "first {first}: slot {i} lost its contents"),
                }
            }
        }
    }
}
