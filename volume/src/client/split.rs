//! Splitting a volume range into pieces that each lie within one extent, since each extent
//! belongs to one placement group with its own replicas. Pure; no IO.

use crate::wire::EXTENT_SIZE_BYTES;

/// A part of an IO that lies within one extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub extent: u64,
    /// Byte offset in the volume.
    pub offset: u64,
    pub len: u32,
    /// Where the piece starts within the IO, in bytes.
    pub at: u64,
}

/// Pieces of `[offset, offset + len)`, in order; empty for an empty range.
pub fn split(offset: u64, len: u64) -> impl Iterator<Item = Piece> {
    let end = offset
        .checked_add(len)
        .expect("range checked by the caller");
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let extent = pos / EXTENT_SIZE_BYTES;
        let piece_end = ((extent + 1) * EXTENT_SIZE_BYTES).min(end);
        let piece = Piece {
            extent,
            offset: pos,
            len: (piece_end - pos) as u32,
            at: pos - offset,
        };
        pos = piece_end;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const E: u64 = EXTENT_SIZE_BYTES;

    #[test]
    fn an_unaligned_io_across_two_extents_becomes_two_pieces() {
        let p: Vec<Piece> = split(E - 512, 4096).collect();
        assert_eq!(
            p,
            vec![
                Piece {
                    extent: 0,
                    offset: E - 512,
                    len: 512,
                    at: 0
                },
                Piece {
                    extent: 1,
                    offset: E,
                    len: 3584,
                    at: 512
                },
            ]
        );
    }

    proptest! {
        #[test]
        fn pieces_tile_the_range_and_never_cross_an_extent(offset in 0u64..(64 * E), len in 0u64..(10 * E)) {
            let mut next = offset;
            for p in split(offset, len) {
                prop_assert_eq!(p.offset, next);
                prop_assert_eq!(p.at, p.offset - offset);
                prop_assert!(p.len > 0);
                prop_assert_eq!(p.offset / E, p.extent);
                prop_assert_eq!((p.offset + u64::from(p.len) - 1) / E, p.extent);
                next = p.offset + u64::from(p.len);
            }
            prop_assert_eq!(next, offset + len);
        }
    }
}
