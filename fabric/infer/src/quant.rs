//! Symmetric int8 quantization: weights per output channel (done offline, scales shipped in
//! the model file), activations per row at run time. A value x maps to `round(x / scale)`
//! clamped to ±127, with `scale = max|x| / 127`.

/// Largest magnitude of a quantized value (symmetric: -128 is never produced).
pub const QUANT_MAX: f32 = 127.0;

/// Quantizes each row of `x` (`rows × width`) into `out`, returning each row's scale.
pub fn quantize_rows(x: &[f32], width: usize, out: &mut [i8]) -> Vec<f32> {
    quantize_rows_smoothed(x, width, None, out)
        .into_iter()
        .map(|r| r.scale)
        .collect()
}

/// What quantizing one row found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowQuant {
    /// The row's scale.
    pub scale: f32,
    /// Its largest |value| over its mean |value|: how lopsided the row is (1 for a flat row,
    /// `width` for a row with one non-zero value; 0 for a row of zeros).
    pub spread: f32,
}

/// Quantizes each row of `x`, each value first multiplied by its channel's `smooth` factor.
pub fn quantize_rows_smoothed(
    x: &[f32],
    width: usize,
    smooth: Option<&[f32]>,
    out: &mut [i8],
) -> Vec<RowQuant> {
    assert_eq!(x.len(), out.len(), "output must match input length");
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "input must be whole rows of {width}"
    );
    if let Some(s) = smooth {
        assert_eq!(s.len(), width, "one smoothing factor per channel");
    }
    let part = width * ROWS_PER_TASK;
    let parts = crate::team::map_chunks_mut(out, part, |t, q| {
        x[t * part..][..q.len()]
            .chunks(width)
            .zip(q.chunks_mut(width))
            .map(|(row, q)| quantize_row(row, smooth, q))
            .collect::<Vec<_>>()
    });
    parts.into_iter().flatten().collect()
}

/// Rows one task quantizes at most.
const ROWS_PER_TASK: usize = 64;

crate::fastmath::dispatch!(
    pub(crate) quantize_row,
    quantize_row_avx2,
    (row: &[f32], smooth: Option<&[f32]>, q: &mut [i8]) -> RowQuant,
    {
        // Eight running maxima and sums, so the pass vectorises.
        let (mut max, mut sum) = ([0f32; 8], [0f32; 8]);
        let mut take = |c: &[f32], s: &[f32]| {
            for j in 0..8 {
                let a = (c[j] * s[j]).abs();
                max[j] = max[j].max(a);
                sum[j] += a;
            }
        };
        let ones = [1f32; 8];
        let rest = row.len() - row.len() % 8;
        match smooth {
            Some(sm) => {
                for (c, s) in row.chunks_exact(8).zip(sm.chunks_exact(8)) {
                    take(c, s);
                }
            }
            None => row.chunks_exact(8).for_each(|c| take(c, &ones)),
        }
        for (i, v) in row.iter().enumerate().skip(rest) {
            let a = (v * smooth.map_or(1.0, |s| s[i])).abs();
            max[0] = max[0].max(a);
            sum[0] += a;
        }
        let max = max.iter().fold(0f32, |m, v| m.max(*v));
        let sum: f32 = sum.iter().sum();
        let scale = if max > 0.0 && max.is_finite() {
            max / QUANT_MAX
        } else {
            1.0
        };
        let inv = 1.0 / scale;
        // Adding and taking away 1.5 · 2²³ rounds to nearest (ties to even) in any lane.
        const ROUND: f32 = 12_582_912.0;
        // The integer is in the low bits of `x + 1.5 · 2²³` (|x| ≤ 127): reading them back
        // needs no float-to-int conversion, which does not vectorise with its NaN checks.
        let quant = |v: f32| {
            let x = (v * inv).clamp(-QUANT_MAX, QUANT_MAX) + ROUND;
            (x.to_bits() as i32 - ROUND.to_bits() as i32) as i8
        };
        match smooth {
            Some(s) => {
                for ((d, v), s) in q.iter_mut().zip(row).zip(s) {
                    *d = quant(v * s);
                }
            }
            None => {
                for (d, v) in q.iter_mut().zip(row) {
                    *d = quant(*v);
                }
            }
        }
        let spread = if sum > 0.0 {
            max * row.len() as f32 / sum
        } else {
            0.0
        };
        RowQuant { scale, spread }
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_multiplies_first_and_spread_tells_lopsided_rows() {
        let x = [1.0f32, 1.0, 1.0, 1.0, 8.0, 0.0, 0.0, 0.0];
        let mut q = [0i8; 8];
        let r = quantize_rows_smoothed(&x, 4, Some(&[2.0, 1.0, 1.0, 0.5]), &mut q);
        assert_eq!(q[..4], [127, 64, 64, 32]);
        assert_eq!(r[0].scale, 2.0 / 127.0);
        assert!((r[0].spread - 2.0 * 4.0 / 4.5).abs() < 1e-6);
        assert_eq!(r[1].spread, 4.0, "one non-zero value of four");
        // Ties round to even, as the vector rounding does.
        let mut q = [0i8; 3];
        quantize_rows(&[127.0, 0.5, 1.5], 3, &mut q);
        assert_eq!(q, [127, 0, 2]);
    }

    #[test]
    fn largest_magnitude_maps_to_127_and_zero_rows_stay_zero() {
        let x = [0.5f32, -2.0, 1.0, 0.0, 0.0, 0.0];
        let mut q = [0i8; 6];
        let scales = quantize_rows(&x, 3, &mut q);
        assert_eq!(q, [32, -127, 64, 0, 0, 0]);
        assert_eq!(scales[0], 2.0 / 127.0);
        assert_eq!(scales[1], 1.0);
    }
}
