//! The pinned hash and the deterministic logarithm behind every placement draw.
//!
//! Every node must compute the same PG map from the same cluster map, across releases and CPUs,
//! so nothing here may change once shipped: the mixer constants, the way keys are combined, and
//! the logarithm are fixed, and `tests` pins their outputs. The logarithm is written with plain
//! IEEE-754 `+ - * /` only (no `f64::ln`, whose last bit differs between libm builds), so its
//! result is bit-identical everywhere Rust runs.

/// Seed folded into every PG key; changing it reshuffles every cluster.
const PLACEMENT_SEED: u64 = 0x6661_6272_6963_2e70; // "fabric.p"

/// First multiplier of the mixer (the 64-bit golden ratio, odd).
const MIX_MUL_A: u64 = 0x9e37_79b9_7f4a_7c15;
/// Second multiplier of the mixer (odd, high bit density).
const MIX_MUL_B: u64 = 0xbf58_476d_1ce4_e5b9;

/// Purpose tag of a draw that decides when an arrival happens.
pub const DRAW_TIME: u64 = 0;
/// Purpose tag of a draw that decides where on the capacity line an arrival lands.
pub const DRAW_POSITION: u64 = 1;

/// Ticks per unit of exponential time: `neg_ln_ticks` returns `-ln(u) * 2^32`.
pub const TICKS_PER_UNIT_TIME: f64 = 4_294_967_296.0;

/// A fixed 64-bit mixer: two xor-shift-multiply rounds and a final xor-shift.
/// Every input bit affects every output bit; `tests::mixer_avalanches` checks it.
#[inline]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(MIX_MUL_B);
    x ^= x >> 27;
    x = x.wrapping_mul(MIX_MUL_A);
    x ^= x >> 31;
    x
}

/// The key of one placement group of one pool; all of its draws derive from it.
#[inline]
pub const fn pg_key(pool: u32, pg: u32) -> u64 {
    mix64(PLACEMENT_SEED ^ ((pool as u64) << 32) ^ pg as u64)
}

/// One draw of a PG: the `arrival`-th arrival of capacity block `block`, for `purpose`.
#[inline]
pub const fn draw(key: u64, block: u32, arrival: u32, purpose: u64) -> u64 {
    let salt = ((block as u64) << 33) | ((arrival as u64) << 1) | purpose;
    mix64(key ^ salt.wrapping_mul(MIX_MUL_A))
}

/// Maps a uniform 64-bit draw to a uniform position in `[0, span)`.
#[inline]
pub const fn scale(draw: u64, span: u64) -> u64 {
    ((draw as u128 * span as u128) >> 64) as u64
}

/// `-ln(u)` for the uniform `u` in (0, 1) that `draw` encodes, in fixed-point ticks
/// (`TICKS_PER_UNIT_TIME` per unit): an exponentially distributed waiting time with rate 1.
///
/// `u = x / 2^53` for the odd 53-bit `x` taken from the draw. `ln(x)` is split into the
/// exponent, a 256-entry table for the next 8 bits and a short series for the rest (the series
/// argument is below 1/256, so four terms are exact to ~1e-13).
#[inline]
pub fn neg_ln_ticks(draw: u64) -> u64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    let x = (draw >> 11) | 1;
    let leading = x.leading_zeros();
    let exponent = 63 - leading;
    let normalized = x << leading;
    let index = ((normalized >> 55) & 0xff) as usize;
    // Bits below the table index, as a fraction of one table step, in [0, 1).
    let fraction = ((normalized << 9) >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0);
    let d = fraction * LN_TABLE_RECIPROCAL[index];
    let ln1p = d * (1.0 - d * (0.5 - d * (1.0 / 3.0 - d * 0.25)));
    let ln_x = exponent as f64 * LN_2 + LN_TABLE[index] + ln1p;
    let neg_ln = 53.0 * LN_2 - ln_x;
    debug_assert!((0.0..40.0).contains(&neg_ln));
    (neg_ln * TICKS_PER_UNIT_TIME) as u64
}

/// `ln(1 + i / 256)`, built at compile time by the deterministic logarithm.
const LN_TABLE: [f64; 256] = {
    let mut table = [0.0; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ln_deterministic(1.0 + i as f64 / 256.0);
        i += 1;
    }
    table
};

/// `1 / (256 + i)`: one table step relative to the table point.
const LN_TABLE_RECIPROCAL: [f64; 256] = {
    let mut table = [0.0; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = 1.0 / (256.0 + i as f64);
        i += 1;
    }
    table
};

/// Natural logarithm of a positive, normal `x`, using only correctly rounded IEEE operations.
///
/// Splits `x = m * 2^e` with `m` in `[sqrt(1/2), sqrt(2))` and sums the series
/// `ln(m) = 2 * (s + s^3/3 + s^5/5 + ...)`, `s = (m - 1) / (m + 1)`, `|s| < 0.172`; ten terms
/// leave an error below 1e-15.
pub const fn ln_deterministic(x: f64) -> f64 {
    assert!(
        x.is_normal() && x > 0.0,
        "ln_deterministic needs a positive normal number"
    );
    const LN_2: f64 = std::f64::consts::LN_2;
    const SQRT_2: f64 = std::f64::consts::SQRT_2;
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | (1023 << 52));
    if m > SQRT_2 {
        m *= 0.5;
        exponent += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut series = 1.0 / 21.0;
    let mut odd = 19.0;
    while odd > 0.0 {
        series = series * s2 + 1.0 / odd;
        odd -= 2.0;
    }
    exponent as f64 * LN_2 + 2.0 * s * series
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These values are part of the on-cluster format: if one changes, every PG moves.
    #[test]
    fn mixer_and_keys_are_pinned() {
        assert_eq!(mix64(0), PIN_MIX_0);
        assert_eq!(mix64(1), PIN_MIX_1);
        assert_eq!(mix64(u64::MAX), PIN_MIX_MAX);
        assert_eq!(pg_key(1, 0), PIN_KEY_1_0);
        assert_eq!(pg_key(7, 123_456), PIN_KEY_7_123456);
        assert_eq!(draw(pg_key(1, 0), 3, 2, DRAW_TIME), PIN_DRAW_TIME);
        assert_eq!(draw(pg_key(1, 0), 3, 2, DRAW_POSITION), PIN_DRAW_POSITION);
    }

    #[test]
    fn exponential_ticks_are_pinned() {
        assert_eq!(neg_ln_ticks(0), PIN_TICKS_0);
        assert_eq!(neg_ln_ticks(u64::MAX), PIN_TICKS_MAX);
        assert_eq!(neg_ln_ticks(1 << 63), PIN_TICKS_HALF);
        assert_eq!(neg_ln_ticks(0x0123_4567_89ab_cdef), PIN_TICKS_PATTERN);
    }

    #[test]
    fn deterministic_ln_matches_libm_closely() {
        let mut x = 1e-15;
        while x < 1.0 {
            let err = (ln_deterministic(x) - x.ln()).abs();
            assert!(err < 1e-12, "ln({x}) off by {err}");
            x *= 1.37;
        }
        assert_eq!(ln_deterministic(1.0), 0.0);
    }

    #[test]
    fn mixer_avalanches() {
        // Flipping one input bit flips about half of the output bits, for every bit position.
        for bit in 0..64 {
            let mut flipped_total = 0u32;
            let samples = 256u64;
            for i in 0..samples {
                let x = mix64(i ^ 0x5555);
                flipped_total += (mix64(x) ^ mix64(x ^ (1 << bit))).count_ones();
            }
            let mean = flipped_total as f64 / samples as f64;
            assert!((28.0..36.0).contains(&mean), "bit {bit}: mean flips {mean}");
        }
    }

    #[test]
    fn exponential_ticks_match_libm_closely() {
        for i in 0..100_000u64 {
            // Shifting spreads the samples over every exponent, down to the smallest `u`.
            let draw = mix64(i) >> (i % 64);
            let u = ((draw >> 11) | 1) as f64 / 9_007_199_254_740_992.0;
            let exact = -u.ln() * TICKS_PER_UNIT_TIME;
            let err = (neg_ln_ticks(draw) as f64 - exact).abs();
            assert!(
                err <= 2.0,
                "draw {draw:#x}: {} ticks, libm says {exact}",
                neg_ln_ticks(draw)
            );
        }
    }

    #[test]
    fn scale_stays_in_span() {
        assert_eq!(scale(0, 10), 0);
        assert_eq!(scale(u64::MAX, 10), 9);
        assert_eq!(scale(u64::MAX, 1), 0);
    }

    const PIN_MIX_0: u64 = 0;
    const PIN_MIX_1: u64 = 0xa263_5434_a30b_ea49;
    const PIN_MIX_MAX: u64 = 0xc031_4594_3ca7_62ab;
    const PIN_KEY_1_0: u64 = 0x09d6_5524_0fc2_eb8a;
    const PIN_KEY_7_123456: u64 = 0xa6eb_6bca_cfaa_4a6e;
    const PIN_DRAW_TIME: u64 = 0x3697_76a9_ec1c_a340;
    const PIN_DRAW_POSITION: u64 = 0xd547_aa72_de57_5811;
    const PIN_TICKS_0: u64 = 157_783_357_006;
    const PIN_TICKS_MAX: u64 = 0;
    const PIN_TICKS_HALF: u64 = 2_977_044_471;
    const PIN_TICKS_PATTERN: u64 = 23_261_974_099;
}
