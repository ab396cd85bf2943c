//! Hex text of bytes, as keys, digests and serials are written in files, commands and logs.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`. (By table, not `write!`: every audit entry's digest goes
/// through here on each member's apply and in every snapshot.)
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Lowercase hex of `bytes` in `out`, which must hold exactly twice as many bytes: for the
/// digests serialized with every Raft entry, without an allocation.
pub fn encode_into<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    assert_eq!(out.len(), 2 * bytes.len(), "hex of {} bytes", bytes.len());
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    std::str::from_utf8(out).expect("hex digits are ASCII")
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Fills `out` from exactly twice as many hex digits; `None` if `text` is not that.
fn decode_into(text: &str, out: &mut [u8]) -> Option<()> {
    let text = text.as_bytes();
    if text.len() != 2 * out.len() {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

/// The bytes of hex `text` (either case); `None` if it is not hex.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let mut out = vec![0; text.len() / 2];
    decode_into(text, &mut out)?;
    Some(out)
}

/// Exactly `N` bytes from exactly `2N` hex digits.
pub fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0; N];
    decode_into(text, &mut out)?;
    Some(out)
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
        assert_eq!(decode("+a"), None);
        let mut buf = [0u8; 6];
        assert_eq!(encode_into(&[0, 0xab, 0x10], &mut buf), "00ab10");
        assert_eq!(decode("é0"), None);
        assert_eq!(decode_array::<2>("abcd"), Some([0xab, 0xcd]));
        assert_eq!(decode_array::<2>("abcdef"), None);
    }
}
