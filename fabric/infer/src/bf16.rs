//! bfloat16 as raw `u16` bits: the top half of an f32. Conversion from f32 rounds to nearest
//! even (what hardware `vcvtneps2bf16` does); conversion back is exact.

/// Rounds an f32 to the nearest bf16 (ties to even). NaN stays NaN (quiet).
#[inline]
pub fn from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// Widens a bf16 to the f32 it denotes (exact).
#[inline]
pub fn to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// The value an f32 has after a round trip through bf16.
#[inline]
pub fn round(x: f32) -> f32 {
    to_f32(from_f32(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_representable_in_bf16_survive_the_round_trip() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            3.0 * 2f32.powi(100),
            2f32.powi(-126),
            f32::INFINITY,
        ] {
            assert_eq!(round(x).to_bits(), x.to_bits(), "{x}");
        }
    }

    #[test]
    fn halfway_cases_round_to_even() {
        // 1 + 2^-8 lies exactly between bf16 neighbours 1.0 and 1 + 2^-7: goes to 1.0 (even).
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 lies between 1 + 2^-7 (odd) and 1 + 2^-6 (even): goes up.
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert!(round(f32::NAN).is_nan());
    }
}
