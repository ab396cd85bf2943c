//! The payload of a BLOCK_STATUS reply: the allocation of the asked range, in order, as entries
//! of a length (u32, little endian, non-zero) and a flags byte (bit 0: a hole, bit 1: reads as
//! zeros). The entries cover at least the range's first byte and at most the whole range.

use bytes::{BufMut, Bytes, BytesMut};

use crate::volume::{Extent, ExtentState};

/// Bytes of one entry.
pub const ENTRY_BYTES: usize = 5;
/// Most entries one reply carries (the store reports at most as many).
pub const ENTRIES_MAX: usize = crate::store::local::BLOCK_STATUS_EXTENTS_MAX;

const FLAG_HOLE: u8 = 1;
const FLAG_ZERO: u8 = 2;

/// Encodes `extents` (each shorter than 4 GiB: a request covers one extent at most).
pub fn encode(extents: &[Extent]) -> Bytes {
    assert!(extents.len() <= ENTRIES_MAX);
    let mut out = BytesMut::with_capacity(extents.len() * ENTRY_BYTES);
    for e in extents {
        let len = u32::try_from(e.len).expect("a block status entry fits in one extent");
        assert!(len > 0, "empty block status entry");
        out.put_u32_le(len);
        out.put_u8(
            if e.state.hole { FLAG_HOLE } else { 0 } | if e.state.zero { FLAG_ZERO } else { 0 },
        );
    }
    out.freeze()
}

/// Decodes the answer to a request of `len` bytes; `None` for anything malformed (no entry,
/// an empty one, unknown flags, or more than `len` bytes).
pub fn decode(payload: &[u8], len: u64) -> Option<Vec<Extent>> {
    if payload.is_empty()
        || !payload.len().is_multiple_of(ENTRY_BYTES)
        || payload.len() / ENTRY_BYTES > ENTRIES_MAX
    {
        return None;
    }
    let mut out = Vec::with_capacity(payload.len() / ENTRY_BYTES);
    let mut covered = 0u64;
    for entry in payload.chunks_exact(ENTRY_BYTES) {
        let n = u64::from(u32::from_le_bytes(entry[..4].try_into().ok()?));
        let flags = entry[4];
        if n == 0 || flags & !(FLAG_HOLE | FLAG_ZERO) != 0 {
            return None;
        }
        covered = covered.checked_add(n)?;
        out.push(Extent {
            len: n,
            state: ExtentState {
                hole: flags & FLAG_HOLE != 0,
                zero: flags & FLAG_ZERO != 0,
            },
        });
    }
    (covered <= len).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(len: u64, hole: bool) -> Extent {
        Extent {
            len,
            state: ExtentState { hole, zero: hole },
        }
    }

    #[test]
    fn entries_round_trip() {
        let extents = vec![
            extent(4096, false),
            extent(1 << 20, true),
            extent(8192, false),
        ];
        let bytes = encode(&extents);
        assert_eq!(bytes.len(), 3 * ENTRY_BYTES);
        assert_eq!(decode(&bytes, (1 << 20) + 12288), Some(extents));
    }

    #[test]
    fn malformed_answers_are_refused() {
        let good = encode(&[extent(4096, true)]);
        assert_eq!(decode(&good, 4095), None, "more than asked");
        assert_eq!(decode(&[], 4096), None, "no entry");
        assert_eq!(decode(&good[..4], 4096), None, "torn entry");
        assert_eq!(decode(&[0, 0, 0, 0, 1], 4096), None, "empty entry");
        assert_eq!(decode(&[0, 16, 0, 0, 4], 4096), None, "unknown flag");
    }
}
