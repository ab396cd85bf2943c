//! Symmetric int8 quantization: weights per output channel (done offline, scales shipped in
//! the model file), activations per row at run time. A value x maps to `round(x / scale)`
//! clamped to ±127, with `scale = max|x| / 127`.

/// Largest magnitude of a quantized value (symmetric: -128 is never produced).
pub const QUANT_MAX: f32 = 127.0;

/// Quantizes each row of `x` (`rows × width`) into `out`, returning each row's scale.
pub fn quantize_rows(x: &[f32], width: usize, out: &mut [i8]) -> Vec<f32> {
    assert_eq!(x.len(), out.len(), "output must match input length");
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "input must be whole rows of {width}"
    );
    x.chunks(width)
        .zip(out.chunks_mut(width))
        .map(|(row, q)| {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 && max.is_finite() {
                max / QUANT_MAX
            } else {
                1.0
            };
            for (d, v) in q.iter_mut().zip(row) {
                *d = (v / scale).round().clamp(-QUANT_MAX, QUANT_MAX) as i8;
            }
            scale
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
