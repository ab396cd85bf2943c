//! The layers a model is made of, each applied in place to a batch of rows.
//!
//! GELU uses the tanh approximation (as in GPT-2 and BERT's fast path): it needs no `erf`,
//! and differs from the exact form by under 1e-3 everywhere.

use crate::gemm::Engine;
use crate::pack::{PackedBf16, PackedF32, PackedI8};
use crate::quant::{RowQuant, quantize_row, quantize_rows_smoothed};
use crate::scratch;

/// One step of a model.
#[derive(Debug)]
pub enum Layer {
    /// `y = x · Wᵀ + b` with bf16 inputs and weights, f32 accumulation.
    LinearBf16 {
        weight: PackedBf16,
        bias: Option<Vec<f32>>,
    },
    /// `y = x · Wᵀ + b` in f32.
    LinearF32 {
        weight: PackedF32,
        bias: Option<Vec<f32>>,
    },
    /// `y = (q(x) · Wᵀ) · s_x · s_w + b`: rows of x quantized to int8 at run time, W int8
    /// per output channel with f32 scales `s_w`.
    LinearInt8 {
        weight: PackedI8,
        scales: Vec<f32>,
        bias: Option<Vec<f32>>,
        /// Per input channel, what x is multiplied by before it is quantized (the weights
        /// were divided by it): evens out channels of outsized activations, which would
        /// otherwise take a row's whole int8 range.
        smooth: Option<Vec<f32>>,
        /// Rows int8 would serve badly, computed in bf16 instead.
        outliers: Option<OutlierRows>,
    },
    LayerNorm {
        gamma: Vec<f32>,
        beta: Vec<f32>,
        eps: f32,
    },
    Relu,
    Gelu,
    Softmax,
}

/// Rows whose (smoothed) largest |x| is more than `ratio` times their mean |x| — a token whose
/// few massive activations would leave the rest of its row a handful of int8 levels — are
/// quantized twice: the row, then what its int8 form missed (at most half a step of the
/// first scale) with a scale of its own, both through the same int8 GEMM, the two products
/// summed. The row keeps about 15 bits where it needs them, with no second copy of the
/// weights.
#[derive(Debug)]
pub struct OutlierRows {
    pub ratio: f32,
}

impl OutlierRows {
    /// Appends to `q` the residual rows of the rows of `x` (`width` wide, already quantized
    /// into `q` as `quant` says) over the ratio; returns (row, residual scale) per such row,
    /// in the order appended.
    fn residuals(
        &self,
        x: &[f32],
        width: usize,
        smooth: Option<&[f32]>,
        quant: &[RowQuant],
        q: &mut Vec<i8>,
    ) -> Vec<(usize, f32)> {
        let mut out = Vec::new();
        let mut residual = vec![0f32; width];
        let mut rq = vec![0i8; width];
        for (i, r) in quant.iter().enumerate() {
            if r.spread <= self.ratio {
                continue;
            }
            let row = &x[i * width..][..width];
            let first = &q[i * width..][..width];
            for (c, (d, (v, q1))) in residual.iter_mut().zip(row.iter().zip(first)).enumerate() {
                let smoothed = v * smooth.map_or(1.0, |s| s[c]);
                *d = smoothed - f32::from(*q1) * r.scale;
            }
            let scale = quantize_row(&residual, None, &mut rq).scale;
            q.extend_from_slice(&rq);
            out.push((i, scale));
        }
        out
    }
}

crate::fastmath::dispatch!(
    dequantize_row,
    dequantize_row_avx2,
    (acc: &[i32], offset: Option<&[i32]>, sx: f32, scales: &[f32], bias: &[f32], y: &mut [f32]),
    {
        // `offset`: the column sums `Engine::i8_offset` left in, times `OFFSET`.
        match offset {
            Some(sums) => {
                for ((((y, a), s), sw), b) in y.iter_mut().zip(acc).zip(sums).zip(scales).zip(bias)
                {
                    *y = (*a - crate::gemm::OFFSET * s) as f32 * sx * sw + b;
                }
            }
            None => {
                for (((y, a), sw), b) in y.iter_mut().zip(acc).zip(scales).zip(bias) {
                    *y = *a as f32 * sx * sw + b;
                }
            }
        }
    }
);

impl Layer {
    /// Output width for an input of `width` values per row.
    pub fn out_width(&self, width: usize) -> usize {
        match self {
            Layer::LinearBf16 { weight, .. } => weight.n(),
            Layer::LinearF32 { weight, .. } => weight.n(),
            Layer::LinearInt8 { weight, .. } => weight.n(),
            _ => width,
        }
    }

    /// Applies the layer to `rows` rows of `x` (each `width` wide), returning the output.
    pub fn apply(&self, engine: &Engine, rows: usize, width: usize, mut x: Vec<f32>) -> Vec<f32> {
        assert_eq!(x.len(), rows * width, "activations must be rows × width");
        match self {
            Layer::LinearBf16 { weight, bias } => {
                let mut y = scratch::take(rows * weight.n());
                engine.bf16(rows, &x, weight, &mut y);
                scratch::give(x);
                add_bias(&mut y, bias.as_deref());
                y
            }
            Layer::LinearF32 { weight, bias } => {
                let mut y = scratch::take(rows * weight.n());
                engine.f32(rows, &x, weight, &mut y);
                scratch::give(x);
                add_bias(&mut y, bias.as_deref());
                y
            }
            Layer::LinearInt8 {
                weight,
                scales,
                bias,
                smooth,
                outliers,
            } => {
                let mut q = scratch::take(x.len());
                let quant = quantize_rows_smoothed(&x, width, smooth.as_deref(), &mut q);
                let residuals = match outliers {
                    Some(o) => o.residuals(&x, width, smooth.as_deref(), &quant, &mut q),
                    None => Vec::new(),
                };
                let n = weight.n();
                let all = rows + residuals.len();
                let mut acc = scratch::take(all * n);
                // The VNNI path's offset comes off here, in the pass that reads C anyway.
                let offset = engine
                    .i8_offset(all, &q, weight, &mut acc)
                    .then(|| weight.col_sums());
                scratch::give(q);
                let mut y = scratch::take(rows * n);
                let zeros = vec![0f32; n];
                let bias = bias.as_deref().unwrap_or(&zeros);
                crate::team::chunks_mut(&mut y, n * ROWS_PER_TASK, |t, ys| {
                    let first = t * ROWS_PER_TASK;
                    for (i, y) in ys.chunks_exact_mut(n).enumerate() {
                        let (acc, r) = (&acc[(first + i) * n..][..n], &quant[first + i]);
                        dequantize_row(acc, offset, r.scale, scales, bias, y);
                    }
                });
                // A residual row's product is added to its row's (the bias is in already).
                let mut first = vec![0f32; n];
                for (extra, &(row, scale)) in residuals.iter().enumerate() {
                    let y = &mut y[row * n..(row + 1) * n];
                    first.copy_from_slice(y);
                    let acc = &acc[(rows + extra) * n..][..n];
                    dequantize_row(acc, offset, scale, scales, &first, y);
                }
                scratch::give(acc);
                scratch::give(x);
                y
            }
            Layer::LayerNorm { gamma, beta, eps } => {
                let norm = |rows: &mut [f32]| {
                    for row in rows.chunks_mut(width.max(1)) {
                        crate::fastmath::layer_norm_row(row, gamma, beta, *eps);
                    }
                };
                crate::team::chunks_mut(&mut x, width * ROWS_PER_TASK, |_, rows| norm(rows));
                x
            }
            Layer::Relu => {
                x.iter_mut().for_each(|v| *v = v.max(0.0));
                x
            }
            Layer::Gelu => {
                x.iter_mut().for_each(|v| *v = gelu(*v));
                x
            }
            Layer::Softmax => {
                for row in x.chunks_mut(width) {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                    let mut sum = 0.0;
                    for v in row.iter_mut() {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                    row.iter_mut().for_each(|v| *v /= sum);
                }
                x
            }
        }
    }
}

/// GELU, tanh approximation.
pub fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

/// Rows one task of an element-wise step takes.
const ROWS_PER_TASK: usize = 64;

fn add_bias(y: &mut [f32], bias: Option<&[f32]>) {
    if let Some(bias) = bias.filter(|b| !b.is_empty()) {
        crate::team::chunks_mut(y, bias.len() * ROWS_PER_TASK, |_, rows| {
            for row in rows.chunks_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let engine = Engine::new(crate::Path::Scalar).unwrap();
        let y = Layer::Softmax.apply(&engine, 2, 3, vec![1.0, 2.0, 3.0, 1000.0, 0.0, -1000.0]);
        assert!((y[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6 && y[0] < y[1] && y[1] < y[2]);
        assert!((y[3] - 1.0).abs() < 1e-6, "large logits must not overflow");
    }

    #[test]
    fn layer_norm_centres_and_scales_each_row() {
        let engine = Engine::new(crate::Path::Scalar).unwrap();
        let ln = Layer::LayerNorm {
            gamma: vec![1.0; 4],
            beta: vec![0.5; 4],
            eps: 1e-5,
        };
        let y = ln.apply(&engine, 1, 4, vec![1.0, 2.0, 3.0, 4.0]);
        let mean = y.iter().sum::<f32>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-5, "{y:?}");
    }

    #[test]
    fn gelu_matches_known_points() {
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(1.0) - 0.841_192).abs() < 1e-4);
        assert!(gelu(-10.0).abs() < 1e-6);
    }
}
