//! A BERT encoder for sentence embeddings (all-MiniLM-L6-v2 and models of its shape): token,
//! position and type embeddings, `num_hidden_layers` blocks of multi-head self-attention and
//! a GELU feed-forward, each followed by a residual and a LayerNorm, then mean pooling over
//! the tokens and L2 normalisation.
//!
//! The dense layers run on the GEMM engine in the chosen [`Dtype`]: f32; bf16 inputs and
//! weights with f32 accumulation; or int8 weights per output channel with activations
//! quantized per row at run time. Norms, softmax, GELU and pooling are always f32, and so is
//! attention (its products are a few percent of the work at 128 tokens).
//!
//! A batch is its sequences back to back, each as long as it is: the dense layers see every
//! token of the batch as one matrix and no padding is ever computed (dynamic padding taken to
//! its end); only attention and pooling look at where a sequence starts and ends.

mod attention;
mod calibration;
pub mod config;
pub mod tokenizer;

pub use calibration::{Calibration, TEXTS as CALIBRATION_TEXTS};
pub use config::BertConfig;
pub use tokenizer::TextTokenizer;

use crate::Error;
use crate::gemm::Engine;
use crate::model::Layer;
use crate::model::layers::OutlierRows;
use crate::model::tensors::WeightsFile;
use crate::pack::{INT8_DEPTH_MAX, PackedBf16, PackedF32, PackedI8};
use crate::scratch;

/// How the dense layers compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    Bf16,
    Int8,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::Int8 => "int8",
        }
    }

    pub fn parse(s: &str) -> Option<Dtype> {
        [Dtype::F32, Dtype::Bf16, Dtype::Int8]
            .into_iter()
            .find(|d| d.name() == s)
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The dense layers of a block, in the order they run; [`Calibration`] is kept per site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    Qkv,
    AttentionOut,
    Up,
    Down,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::Qkv, Site::AttentionOut, Site::Up, Site::Down];
}

/// One encoder block.
#[derive(Debug)]
struct Block {
    /// Q, K and V in one product (`hidden → 3·hidden`).
    qkv: Layer,
    attention_out: Layer,
    attention_norm: Layer,
    up: Layer,
    down: Layer,
    out_norm: Layer,
}

/// A loaded encoder, weights packed for the engine.
#[derive(Debug)]
pub struct Encoder {
    config: BertConfig,
    dtype: Dtype,
    /// `vocab_size × hidden`, `max_position_embeddings × hidden`, and type 0's row.
    words: Vec<f32>,
    positions: Vec<f32>,
    type0: Vec<f32>,
    embedding_norm: Layer,
    blocks: Vec<Block>,
}

impl Encoder {
    /// Reads the encoder's tensors from `weights` (names as Hugging Face's `BertModel` saves
    /// them, with or without a `bert.` prefix) and packs them for `dtype`. Int8 needs the
    /// `calibration` an f32 encoder of the same weights measured ([`Encoder::calibrate`]);
    /// other dtypes ignore it.
    pub fn load(
        config: BertConfig,
        weights: &WeightsFile,
        dtype: Dtype,
        calibration: Option<&Calibration>,
    ) -> Result<Encoder, Error> {
        crate::memory::keep_activations_in_heap();
        let prefix = if weights.has("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let h = config.hidden_size;
        let eps = config.layer_norm_eps as f32;
        let f32s = |name: &str, shape: &[usize]| weights.f32(&format!("{prefix}{name}"), shape);
        let norm = |name: &str| -> Result<Layer, Error> {
            Ok(Layer::LayerNorm {
                gamma: f32s(&format!("{name}.weight"), &[h])?,
                beta: f32s(&format!("{name}.bias"), &[h])?,
                eps,
            })
        };
        if dtype == Dtype::Int8 {
            let fits = calibration.is_some_and(|c| c.fits(&config));
            if !fits {
                return Err(Error::Calibration(
                    "int8 needs a calibration measured on this model's f32 encoder".into(),
                ));
            }
        }
        let dense = |names: &[String], k: usize, n_each: usize, block: usize, site: Site| {
            let mut w = Vec::with_capacity(names.len() * n_each * k);
            let mut b = Vec::with_capacity(names.len() * n_each);
            for name in names {
                w.extend(f32s(&format!("{name}.weight"), &[n_each, k])?);
                b.extend(f32s(&format!("{name}.bias"), &[n_each])?);
            }
            let reach = calibration.map(|c| c.reach(block, site));
            let lopsided = if site == Site::Down {
                OUTLIER_RATIO_FEED_FORWARD
            } else {
                OUTLIER_RATIO
            };
            Ok::<_, Error>(linear(
                dtype,
                names.len() * n_each,
                k,
                w,
                b,
                reach,
                lopsided,
            ))
        };
        let words = f32s("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let positions = f32s(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let types = f32s(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let inter = config.intermediate_size;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let at = |rest: &str| format!("encoder.layer.{i}.{rest}");
            let qkv = ["query", "key", "value"].map(|p| at(&format!("attention.self.{p}")));
            blocks.push(Block {
                qkv: dense(&qkv, h, h, i, Site::Qkv)?,
                attention_out: dense(&[at("attention.output.dense")], h, h, i, Site::AttentionOut)?,
                attention_norm: norm(&at("attention.output.LayerNorm"))?,
                up: dense(&[at("intermediate.dense")], h, inter, i, Site::Up)?,
                down: dense(&[at("output.dense")], inter, h, i, Site::Down)?,
                out_norm: norm(&at("output.LayerNorm"))?,
            });
        }
        Ok(Encoder {
            embedding_norm: norm("embeddings.LayerNorm")?,
            type0: types[..h].to_vec(),
            words,
            positions,
            blocks,
            dtype,
            config,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Longest sequence the position embeddings allow.
    pub fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Embeds each sequence of token ids: `sequences.len() × hidden` values, each row mean
    /// pooled over its tokens and of unit length. Refuses an empty sequence, one longer than
    /// [`Encoder::max_tokens`] and an id outside the vocabulary.
    pub fn embed(&self, engine: &Engine, sequences: &[&[u32]]) -> Result<Vec<f32>, Error> {
        self.forward(engine, sequences, &mut |_, _, _| {})
    }

    /// Runs `sequences` and measures, per block and dense layer, the largest magnitude each
    /// input channel reached: what [`Encoder::load`] balances int8 layers by.
    pub fn calibrate(&self, engine: &Engine, sequences: &[&[u32]]) -> Result<Calibration, Error> {
        let mut c = Calibration::new(&self.config);
        self.forward(engine, sequences, &mut |block, site, x| {
            c.observe(block, site, x)
        })?;
        Ok(c)
    }

    fn check(&self, sequences: &[&[u32]]) -> Result<(), Error> {
        for (i, s) in sequences.iter().enumerate() {
            let bad = |message: String| Err(Error::Input { index: i, message });
            if s.is_empty() || s.len() > self.max_tokens() {
                return bad(format!(
                    "{} tokens; a sequence has 1 to {}",
                    s.len(),
                    self.max_tokens()
                ));
            }
            if let Some(id) = s.iter().find(|id| **id as usize >= self.config.vocab_size) {
                return bad(format!(
                    "token id {id} is outside the vocabulary ({})",
                    self.config.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// The forward pass; `observe` sees the input of every dense layer. It runs on the
    /// calling thread, whose parallel steps the engine's team ([`crate::team`]) joins.
    fn forward(
        &self,
        engine: &Engine,
        sequences: &[&[u32]],
        observe: &mut dyn FnMut(usize, Site, &[f32]),
    ) -> Result<Vec<f32>, Error> {
        self.check(sequences)?;
        let h = self.config.hidden_size;
        let lens: Vec<usize> = sequences.iter().map(|s| s.len()).collect();
        let tokens: usize = lens.iter().sum();
        let mut x = Vec::with_capacity(tokens * h);
        for s in sequences {
            for (p, id) in s.iter().enumerate() {
                let word = &self.words[*id as usize * h..][..h];
                let position = &self.positions[p * h..][..h];
                x.extend((0..h).map(|c| word[c] + position[c] + self.type0[c]));
            }
        }
        let mut x = self.embedding_norm.apply(engine, tokens, h, x);
        let heads = self.config.num_attention_heads;
        let inter = self.config.intermediate_size;
        for (i, b) in self.blocks.iter().enumerate() {
            observe(i, Site::Qkv, &x);
            let qkv = b.qkv.apply(engine, tokens, h, scratch::copy_of(&x));
            let context = attention::attend(engine, &qkv, &lens, heads, h);
            scratch::give(qkv);
            observe(i, Site::AttentionOut, &context);
            let mut a = b.attention_out.apply(engine, tokens, h, context);
            add(&mut a, &x);
            scratch::give(std::mem::replace(
                &mut x,
                b.attention_norm.apply(engine, tokens, h, a),
            ));
            observe(i, Site::Up, &x);
            let mut up = b.up.apply(engine, tokens, h, scratch::copy_of(&x));
            crate::team::chunks_mut(&mut up, inter * 16, |_, rows| {
                crate::fastmath::gelu_in_place(rows)
            });
            observe(i, Site::Down, &up);
            let mut down = b.down.apply(engine, tokens, inter, up);
            add(&mut down, &x);
            scratch::give(std::mem::replace(
                &mut x,
                b.out_norm.apply(engine, tokens, h, down),
            ));
        }
        let pooled = pool(&x, &lens, h);
        scratch::give(x);
        Ok(pooled)
    }
}

/// A row of an int8 layer's input whose largest |x| exceeds this many times its mean |x| is
/// quantized twice (see [`OutlierRows`]): on the test corpus, one row of a sequence in the
/// layers that read a LayerNorm's output (the [CLS] token's, whose massive activations int8
/// serves worst).
pub const OUTLIER_RATIO: f32 = 20.0;
/// The same for the feed-forward's second layer, whose 1536-wide GELU outputs are sparse, so
/// their spread runs higher. (Measured when such rows went through bf16 weights instead: at
/// 20 a quarter of the rows did, and int8 was no faster than f32; at 40, 6 %, worst cosine
/// 0.995; at 80, 2 % and 0.990. Quantized twice, the worst cosine at 40 is 0.993.)
pub const OUTLIER_RATIO_FEED_FORWARD: f32 = 40.0;

/// The dense layer `y = x·Wᵀ + b` for `w` (`n × k`, row per output) in `dtype`.
///
/// Int8 weights get one scale per output channel (`max|w| / 127` of its row); activations
/// are quantized per row at run time. A few of BERT's activation channels run many times
/// larger than the rest, set their row's scale and leave the others a handful of levels; so
/// each int8 layer is smoothed first by `reach` (the largest magnitude each input channel
/// reached in calibration): channel `c` of x is divided by `s_c = √(reach_c / max_n |w_nc|)`
/// and column `c` of W multiplied by it, the product unchanged and the magnitudes of x and W
/// balanced channel by channel. Rows still more lopsided than `lopsided` (largest |x| over
/// mean |x|) are quantized twice.
fn linear(
    dtype: Dtype,
    n: usize,
    k: usize,
    mut w: Vec<f32>,
    bias: Vec<f32>,
    reach: Option<&[f32]>,
    lopsided: f32,
) -> Layer {
    let bias = Some(bias);
    match dtype {
        Dtype::F32 => Layer::LinearF32 {
            weight: PackedF32::from_n_by_k(n, k, &w),
            bias,
        },
        Dtype::Bf16 => Layer::LinearBf16 {
            weight: PackedBf16::from_n_by_k(n, k, &w),
            bias,
        },
        Dtype::Int8 => {
            assert!(k <= INT8_DEPTH_MAX, "int8 depth {k} over {INT8_DEPTH_MAX}");
            // Lopsided rows are quantized twice (see `OutlierRows`).
            let outliers = Some(OutlierRows { ratio: lopsided });
            let smooth = reach.map(|reach| {
                let mut w_max = vec![0f32; k];
                for row in w.chunks_exact(k) {
                    w_max
                        .iter_mut()
                        .zip(row)
                        .for_each(|(m, v)| *m = m.max(v.abs()));
                }
                let s: Vec<f32> = reach
                    .iter()
                    .zip(&w_max)
                    .map(|(a, wm)| {
                        if *a > 0.0 && *wm > 0.0 {
                            (a / wm).sqrt()
                        } else {
                            1.0
                        }
                    })
                    .collect();
                for row in w.chunks_exact_mut(k) {
                    row.iter_mut().zip(&s).for_each(|(v, s)| *v *= s);
                }
                s.iter().map(|s| 1.0 / s).collect()
            });
            let mut q = vec![0i8; w.len()];
            let scales = crate::quant::quantize_rows(&w, k, &mut q);
            Layer::LinearInt8 {
                weight: PackedI8::from_n_by_k(n, k, &q),
                scales,
                bias,
                smooth,
                outliers,
            }
        }
    }
}

/// `y += x` (the residual), in parallel chunks.
fn add(y: &mut [f32], x: &[f32]) {
    const CHUNK: usize = 1 << 14;
    crate::team::chunks_mut(y, CHUNK, |i, y| {
        y.iter_mut().zip(&x[i * CHUNK..]).for_each(|(a, b)| *a += b)
    });
}

/// Mean of each sequence's rows, then scaled to unit length (a zero mean stays zero).
fn pool(x: &[f32], lens: &[usize], h: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(lens.len() * h);
    let mut start = 0;
    for &len in lens {
        let mut mean = vec![0f64; h];
        for row in x[start * h..(start + len) * h].chunks_exact(h) {
            mean.iter_mut()
                .zip(row)
                .for_each(|(m, v)| *m += f64::from(*v));
        }
        let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        out.extend(mean.iter().map(|v| (v * scale) as f32));
        start += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_is_the_erf_form() {
        use crate::fastmath::gelu;
        // x·Φ(x) at known points (Φ from tables).
        for (x, want) in [
            (0.0f32, 0.0f32),
            (1.0, 0.841_344_7),
            (-1.0, -0.158_655_3),
            (2.0, 1.954_5),
        ] {
            assert!((gelu(x) - want).abs() < 1e-4, "{x}: {}", gelu(x));
        }
        // Where the tanh form is off by most, the erf form is exact.
        assert!((gelu(-3.0) - -0.004_049_6).abs() < 1e-6);
    }

    #[test]
    fn pooling_averages_each_sequence_and_normalises() {
        let x = [3.0, 0.0, 0.0, 4.0, 1.0, 1.0];
        let y = pool(&x, &[2, 1], 2);
        assert!(
            (y[0] - 0.6).abs() < 1e-6 && (y[1] - 0.8).abs() < 1e-6,
            "{y:?}"
        );
        assert!((y[2] - y[3]).abs() < 1e-6 && (y[2] * y[2] * 2.0 - 1.0).abs() < 1e-6);
    }
}
