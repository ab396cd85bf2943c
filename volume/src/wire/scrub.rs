//! The payload of a SCRUB reply: what a replica found checking a range (within one extent)
//! against its stored checksums. A u32 (little endian) count of bad blocks; with none, the
//! crc32c of the range's contents follows (u32), otherwise the bad blocks' volume offsets
//! (u64 each, ascending).

use bytes::{BufMut, Bytes, BytesMut};

use crate::store::BLOCK_SIZE_BYTES;

use super::EXTENT_SIZE_BYTES;

/// Most bad blocks one reply can name: every block of an extent.
pub const BAD_BLOCKS_MAX: usize = (EXTENT_SIZE_BYTES / BLOCK_SIZE_BYTES) as usize;

/// A replica's verdict on one range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every block matched its checksum; the range's contents have this crc32c.
    Clean(u32),
    /// These blocks (volume offsets, ascending) did not.
    Bad(Vec<u64>),
}

/// Encodes what a scrub found: `crc` is `Some` exactly when `bad` is empty.
pub fn encode(bad: &[u64], crc: Option<u32>) -> Bytes {
    assert!(bad.len() <= BAD_BLOCKS_MAX, "a scrub covers one extent");
    let mut out = BytesMut::with_capacity(4 + 8 * bad.len().max(1));
    out.put_u32_le(bad.len() as u32);
    if bad.is_empty() {
        out.put_u32_le(crc.expect("a clean range has a digest"));
    } else {
        for &b in bad {
            out.put_u64_le(b);
        }
    }
    out.freeze()
}

/// Decodes the answer to a scrub of `[offset, offset + len)`; `None` for anything malformed
/// (a short or long payload, too many blocks, offsets out of order, unaligned or outside the
/// range).
pub fn decode(payload: &[u8], offset: u64, len: u64) -> Option<Verdict> {
    let count = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let rest = &payload[4..];
    if count == 0 {
        let crc: [u8; 4] = rest.try_into().ok()?;
        return Some(Verdict::Clean(u32::from_le_bytes(crc)));
    }
    if count > BAD_BLOCKS_MAX || rest.len() != 8 * count {
        return None;
    }
    let first = offset - offset % BLOCK_SIZE_BYTES;
    let end = offset.checked_add(len)?;
    let mut bad = Vec::with_capacity(count);
    for chunk in rest.chunks_exact(8) {
        let b = u64::from_le_bytes(chunk.try_into().ok()?);
        let ordered = bad.last().is_none_or(|&last| b > last);
        if !ordered || b % BLOCK_SIZE_BYTES != 0 || b < first || b >= end {
            return None;
        }
        bad.push(b);
    }
    Some(Verdict::Bad(bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_round_trip() {
        let clean = encode(&[], Some(0xdead_beef));
        assert_eq!(decode(&clean, 0, 4096), Some(Verdict::Clean(0xdead_beef)));
        let bad = encode(&[8192, 3 * 4096], None);
        assert_eq!(
            decode(&bad, 4096, 4 * 4096),
            Some(Verdict::Bad(vec![8192, 12288]))
        );
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert_eq!(decode(&[], 0, 4096), None);
        assert_eq!(decode(&[0, 0, 0, 0], 0, 4096), None, "no digest");
        assert_eq!(decode(&[0, 0, 0, 0, 1, 2, 3, 4, 5], 0, 4096), None);
        let outside = encode(&[8192], None);
        assert_eq!(decode(&outside, 0, 8192), None, "past the range");
        let unaligned = encode(&[100], None);
        assert_eq!(decode(&unaligned, 0, 8192), None);
        let unordered = encode(&[4096, 0], None);
        assert_eq!(decode(&unordered, 0, 8192), None);
        let mut short = BytesMut::from(&encode(&[0, 4096], None)[..]);
        short.truncate(12);
        assert_eq!(decode(&short, 0, 8192), None);
        let mut huge = BytesMut::new();
        huge.put_u32_le(u32::MAX);
        assert_eq!(decode(&huge, 0, 8192), None);
    }
}
