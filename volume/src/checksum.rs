//! The one checksum function of the on-disk format, and how block checksums add up.
//!
//! Every block Fabric stores carries `block_crc(data)`. Keeping it behind one function means the
//! on-disk format cannot drift if the implementation behind it changes.
//!
//! A replica checks every block it reads and checksums every block it writes, and the wire
//! protocol carries one crc32c over each payload. [`concat_block_crcs`] derives the payload's
//! crc32c from the blocks' in a few table lookups per block, so the data is passed over once
//! per hop instead of twice: crc32c is the largest CPU cost of moving data on a replica.

use std::sync::OnceLock;

/// The block size the checksums of [`concat_block_crcs`] are over.
pub const CRC_BLOCK_BYTES: usize = 4096;

/// crc32c of one block of zeros.
pub const ZERO_BLOCK_CRC: u32 = 0x98F9_4189;

/// crc32c (Castagnoli) of `data`, hardware accelerated where the CPU has SSE4.2.
#[inline]
pub fn block_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// crc32c of the concatenation of whole blocks of [`CRC_BLOCK_BYTES`], given each block's
/// crc32c in order. Equal to `block_crc` of the concatenated bytes.
pub fn concat_block_crcs(crcs: impl IntoIterator<Item = u32>) -> u32 {
    crcs.into_iter().fold(0, append_block_crc)
}

/// crc32c of `A ‖ B` from `crc(A)` and the crc32c of one more block `B` of
/// [`CRC_BLOCK_BYTES`]: one step of [`concat_block_crcs`].
pub fn append_block_crc(crc_a: u32, crc_b: u32) -> u32 {
    let shift = shift_tables();
    let [b0, b1, b2, b3] = crc_a.to_le_bytes();
    shift[0][usize::from(b0)]
        ^ shift[1][usize::from(b1)]
        ^ shift[2][usize::from(b2)]
        ^ shift[3][usize::from(b3)]
        ^ crc_b
}

/// `crc(A ‖ B) = S(crc(A)) ^ crc(B)` for a block `B`, where `S` is the effect of appending one
/// block's worth of bytes to the crc register. `S` is linear over GF(2), so it is the XOR of
/// its values on each byte of its argument: four tables of 256 entries.
fn shift_tables() -> &'static [[u32; 256]; 4] {
    static TABLES: OnceLock<[[u32; 256]; 4]> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = [[0u32; 256]; 4];
        for (k, table) in t.iter_mut().enumerate() {
            for (b, entry) in table.iter_mut().enumerate() {
                *entry = crc32c::crc32c_combine((b as u32) << (8 * k), 0, CRC_BLOCK_BYTES);
            }
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the polynomial: these values are part of the on-disk format.
    #[test]
    fn crc32c_values_are_pinned() {
        assert_eq!(block_crc(b""), 0);
        assert_eq!(block_crc(b"123456789"), 0xE306_9283);
        assert_eq!(block_crc(&[0u8; CRC_BLOCK_BYTES]), ZERO_BLOCK_CRC);
    }

    #[test]
    fn block_crcs_combine_to_the_crc_of_the_whole() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..64 * CRC_BLOCK_BYTES)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        for blocks in [0, 1, 2, 3, 17, 64] {
            let whole = &data[..blocks * CRC_BLOCK_BYTES];
            let crcs = whole.chunks(CRC_BLOCK_BYTES).map(block_crc);
            assert_eq!(concat_block_crcs(crcs), block_crc(whole), "{blocks} blocks");
        }
        let zeros = vec![0u8; 5 * CRC_BLOCK_BYTES];
        assert_eq!(concat_block_crcs([ZERO_BLOCK_CRC; 5]), block_crc(&zeros));
    }
}
