//! The element-wise functions of a transformer, written so the compiler vectorises them:
//! `exp` (softmax) and `erf` (GELU) without branches or library calls, and run-time dispatch
//! to a copy compiled for AVX2 and FMA where the CPU has them.
//!
//! Accuracy: [`exp`] within 2e-7 relative over [-87.3, 88] (`x = n·ln2 + u` with ln2 in two
//! parts, a degree-7 polynomial for `e^u`, `2^n` built in the exponent bits); [`erf`] within 2e-6
//! absolute (Abramowitz and Stegun 7.1.28, `1 − (1 + a₁x + … + a₆x⁶)⁻¹⁶`, which needs no `exp`:
//! 3e-7 as a formula, the rest f32 rounding raised to the 16th power; GELU's `½x(1 + erf)`
//! keeps it under 1e-6·|x|).

/// `e^x` for x in [-87.3, 88]; below, e^-87.3 (no denormals); above, e^88.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts (Cody and Waite): n · LN2_HI is exact, so x − n·ln2 keeps its bits.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and taking away 1.5 · 2²³ rounds to an integer in any vector lane.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    // n = round(x / ln 2) sits in the low bits of t (|n| ≤ 127, far below 2²²).
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let u = (x - n * LN2_HI) - n * LN2_LO;
    // e^u for |u| ≤ ln2/2, Taylor to u⁷ (error under 6e-9).
    let p = 1.0
        + u * (1.0
            + u * (0.5
                + u * (1.0 / 6.0
                    + u * (1.0 / 24.0
                        + u * (1.0 / 120.0 + u * (1.0 / 720.0 + u * (1.0 / 5040.0)))))));
    // 2^n built in the exponent bits, n read from t's bits: a float-to-int cast (with its
    // NaN and range checks) would keep the loop from vectorising.
    let n_int = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    p * scale
}

/// The error function, to 2e-6 absolute.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const A: [f32; 6] = [
        0.070_523_08,
        0.042_282_01,
        0.009_270_527,
        0.000_152_014_3,
        0.000_276_567_2,
        0.000_043_063_8,
    ];
    let a = x.abs();
    let p = 1.0 + a * (A[0] + a * (A[1] + a * (A[2] + a * (A[3] + a * (A[4] + a * A[5])))));
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    let e = 1.0 - 1.0 / (p8 * p8);
    e.copysign(x)
}

/// BERT's GELU, `x · Φ(x) = ½x(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Defines `$name` (with visibility `$vis`), which runs `body` compiled for AVX-512 (its
/// `wide` copy) or for AVX2 and FMA (as `$avx2`) when the CPU has them, else as built.
macro_rules! dispatch {
    ($vis:vis $name:ident, $avx2:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?, $body:block) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx2($($arg: $ty),*) $(-> $ret)? {
            $body
        }

        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")]
                fn wide($($arg: $ty),*) $(-> $ret)? {
                    $body
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has the features the copy was compiled for.
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { $avx2($($arg),*) };
                }
            }
            $body
        }
    };
}
pub(crate) use dispatch;

dispatch!(pub gelu_in_place, gelu_in_place_avx2, (x: &mut [f32]), {
    for v in x.iter_mut() {
        *v = gelu(*v);
    }
});

dispatch!(pub softmax_in_place, softmax_in_place_avx2, (row: &mut [f32]), {
    // Sixteen running maxima, so the comparisons vectorise (a single fold of f32::max,
    // with its NaN rule, stays scalar).
    let mut maxes = [f32::NEG_INFINITY; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (m, v) in maxes.iter_mut().zip(c) {
            *m = if *v > *m { *v } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&maxes)
        .fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    // Eight running sums, so the adds vectorise.
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (s, v) in sums.iter_mut().zip(c) {
            *s += v;
        }
    }
    let sum: f32 = sums.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
});

dispatch!(pub layer_norm_row, layer_norm_row_avx2, (row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32), {
    let width = row.len() as f32;
    // Eight running sums, so the adds vectorise.
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (s, v) in sums.iter_mut().zip(c) {
            *s += v;
        }
    }
    let mean = (sums.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()) / width;
    let mut squares = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (s, v) in squares.iter_mut().zip(c) {
            *s += (v - mean) * (v - mean);
        }
    }
    let rest: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    let var = (squares.iter().sum::<f32>() + rest) / width;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_hold_their_accuracy() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 4.4e-4; // -88..88 (clamped at 88)
            let want = f64::from(x).exp();
            if want > 1e-37 && x <= 88.0 {
                worst_exp = worst_exp.max((f64::from(exp(x)) - want).abs() / want);
            }
            let y = i as f32 * 3e-5; // -6..6
            worst_erf = worst_erf.max((f64::from(erf(y)) - libm::erf(f64::from(y))).abs());
        }
        assert!(worst_exp < 2e-7, "exp: {worst_exp}");
        assert!(worst_erf < 2e-6, "erf: {worst_erf}");
        assert_eq!(exp(-100.0), exp(-87.3));
        assert!(exp(-100.0) < 1e-37 && erf(0.0) == 0.0 && erf(-9.0) == -1.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_without_overflow() {
        let mut row: Vec<f32> = (0..37).map(|i| i as f32 * 30.0).collect();
        softmax_in_place(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5 && row[36] > 0.99);
        let mut g = [1.0f32, -1.0, 3.0];
        gelu_in_place(&mut g);
        assert!((g[0] - 0.841_344_7).abs() < 1e-6 && (g[1] + 0.158_655_3).abs() < 1e-6);
    }
}
