//! The one checksum function of the on-disk format.
//!
//! Every block Fabric stores carries `block_crc(data)`. Keeping it behind one function means the
//! on-disk format cannot drift if the implementation behind it changes.

/// crc32c (Castagnoli) of `data`, hardware accelerated where the CPU has SSE4.2.
#[inline]
pub fn block_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the polynomial: these values are part of the on-disk format.
    #[test]
    fn crc32c_values_are_pinned() {
        assert_eq!(block_crc(b""), 0);
        assert_eq!(block_crc(b"123456789"), 0xE306_9283);
        assert_eq!(block_crc(&[0u8; 4096]), 0x98F9_4189);
    }
}
