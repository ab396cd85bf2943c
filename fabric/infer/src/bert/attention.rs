//! Multi-head self-attention over sequences packed back to back.
//!
//! A batch holds its sequences one after another, each only as long as it is (no padding),
//! so attention is per sequence and per head: scores `Q·Kᵀ/√d` over the sequence's own
//! tokens, a row softmax, then `P·V`. Both products run on the GEMM engine (K and V packed
//! per job, which costs `L × d` against the `L² × d` of the product), one job per sequence
//! and head, the jobs spread over the engine's threads.

use crate::gemm::{Engine, Parallelism};
use crate::pack::PackedF32;

/// `qkv` is `tokens × 3·hidden` (Q, K and V side by side per token); `lens` are the
/// sequences' lengths in order (summing to `tokens`). Returns the context, `tokens × hidden`.
pub(crate) fn attend(
    engine: &Engine,
    qkv: &[f32],
    lens: &[usize],
    heads: usize,
    hidden: usize,
) -> Vec<f32> {
    let tokens: usize = lens.iter().sum();
    assert_eq!(
        qkv.len(),
        tokens * 3 * hidden,
        "qkv must be tokens × 3·hidden"
    );
    let d = hidden / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let starts: Vec<usize> = lens
        .iter()
        .scan(0, |at, len| {
            let start = *at;
            *at += len;
            Some(start)
        })
        .collect();
    let jobs: Vec<(usize, usize, usize)> = starts
        .iter()
        .zip(lens)
        .filter(|(_, len)| **len > 0)
        .flat_map(|(&start, &len)| (0..heads).map(move |h| (start, len, h)))
        .collect();
    // Each job is small: one thread each, the jobs themselves are the parallelism.
    let single = engine.with_parallelism(Parallelism::Single);
    let contexts: Vec<Vec<f32>> = crate::team::map(jobs.len(), |i| {
        head(&single, qkv, &Shape { hidden, d, scale }, jobs[i])
    });
    // Every row's heads are written below: a reused buffer needs no zeroing.
    let mut out = crate::scratch::take(tokens * hidden);
    for (&(start, _, h), ctx) in jobs.iter().zip(&contexts) {
        for (i, row) in ctx.chunks_exact(d).enumerate() {
            let at = (start + i) * hidden + h * d;
            out[at..at + d].copy_from_slice(row);
        }
    }
    out
}

/// Widths every job shares.
#[derive(Clone, Copy)]
struct Shape {
    hidden: usize,
    /// Values per head.
    d: usize,
    /// `1/√d`, applied to Q.
    scale: f32,
}

/// One head `h` of the sequence at rows `start..start + len`: its columns of Q, and the same
/// columns of K and V (`hidden` and `2·hidden` further along the row).
fn head(
    engine: &Engine,
    qkv: &[f32],
    shape: &Shape,
    (start, len, h): (usize, usize, usize),
) -> Vec<f32> {
    let Shape { hidden, d, scale } = *shape;
    let col = h * d;
    let slice = |offset: usize, factor: f32| -> Vec<f32> {
        let mut m = Vec::with_capacity(len * d);
        for t in start..start + len {
            let at = t * 3 * hidden + offset + col;
            m.extend(qkv[at..at + d].iter().map(|v| v * factor));
        }
        m
    };
    let q = slice(0, scale);
    if len <= SHORT_TOKENS_MAX {
        return short_head(&q, &slice(hidden, 1.0), &slice(2 * hidden, 1.0), len, d);
    }
    let k = PackedF32::from_n_by_k(len, d, &slice(hidden, 1.0));
    let v = PackedF32::from_k_by_n(len, d, &slice(2 * hidden, 1.0));
    let mut p = vec![0f32; len * len];
    engine.f32(len, &q, &k, &mut p);
    for row in p.chunks_exact_mut(len) {
        crate::fastmath::softmax_in_place(row);
    }
    let mut ctx = vec![0f32; len * d];
    engine.f32(len, &p, &v, &mut ctx);
    ctx
}

/// Sequences up to this many tokens attend without the GEMM engine: their products are a few
/// thousand multiply-adds per head, less than packing K and V for the engine would cost.
const SHORT_TOKENS_MAX: usize = 32;

/// One head of a short sequence from its `len × d` Q (already scaled), K and V, row-major.
fn short_head(q: &[f32], k: &[f32], v: &[f32], len: usize, d: usize) -> Vec<f32> {
    let mut ctx = vec![0f32; len * d];
    let mut p = vec![0f32; len];
    for (qi, out) in q.chunks_exact(d).zip(ctx.chunks_exact_mut(d)) {
        for (pj, kj) in p.iter_mut().zip(k.chunks_exact(d)) {
            *pj = dot(qi, kj);
        }
        crate::fastmath::softmax_in_place(&mut p);
        for (pj, vj) in p.iter().zip(v.chunks_exact(d)) {
            out.iter_mut().zip(vj).for_each(|(o, x)| *o += pj * x);
        }
    }
    ctx
}

/// `Σ a·b` with eight running sums, so it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention written out the slow way, in f64.
    fn naive(qkv: &[f32], lens: &[usize], heads: usize, hidden: usize) -> Vec<f32> {
        let d = hidden / heads;
        let at =
            |t: usize, part: usize, c: usize| f64::from(qkv[t * 3 * hidden + part * hidden + c]);
        let mut out = vec![0f32; qkv.len() / 3];
        let mut start = 0;
        for &len in lens {
            for h in 0..heads {
                for i in 0..len {
                    let scores: Vec<f64> = (0..len)
                        .map(|j| {
                            (0..d)
                                .map(|c| at(start + i, 0, h * d + c) * at(start + j, 1, h * d + c))
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..d {
                        let v: f64 = (0..len)
                            .map(|j| e[j] / sum * at(start + j, 2, h * d + c))
                            .sum();
                        out[(start + i) * hidden + h * d + c] = v as f32;
                    }
                }
            }
            start += len;
        }
        out
    }

    #[test]
    fn packed_sequences_attend_only_to_themselves_as_the_naive_form_does() {
        let (heads, hidden) = (4, 64);
        let lens = [5, 1, 40, 33];
        let tokens: usize = lens.iter().sum();
        let mut x = 0x2545_f491_u32;
        let qkv: Vec<f32> = (0..tokens * 3 * hidden)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) * 4.0 - 2.0
            })
            .collect();
        let want = naive(&qkv, &lens, heads, hidden);
        for path in crate::Features::host().available_paths() {
            let engine = Engine::new(path).unwrap();
            let got = attend(&engine, &qkv, &lens, heads, hidden);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{path}: {worst}");
        }
    }
}
