//! Hex text of bytes, as keys, digests and serials are written in files, commands and logs.

/// Lowercase hex of `bytes`. (By table, not `write!`: every audit entry's digest goes
/// through here on each member's apply and in every snapshot.)
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The bytes of hex `text` (either case); `None` if it is not hex.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Exactly `N` bytes from exactly `2N` hex digits.
pub fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    decode(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(encode(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(decode("00AB10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(decode("0"), None);
        assert_eq!(decode("zz"), None);
        assert_eq!(decode("é0"), None);
        assert_eq!(decode_array::<2>("abcd"), Some([0xab, 0xcd]));
        assert_eq!(decode_array::<2>("abcdef"), None);
    }
}
