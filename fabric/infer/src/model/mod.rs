//! Dense models: a TOML description ([`spec`]) plus a safetensors weights file ([`tensors`]),
//! validated and packed once at load into a list of [`Layer`]s, then run on batches of rows.
//!
//! Architecture invariant: every shape mismatch is found at load time, naming the tensor, so
//! [`Model::run`] only fails on input of the wrong width.

pub mod layers;
pub mod spec;
pub mod tensors;

use std::path::Path;

use safetensors::Dtype;

pub use layers::Layer;
use spec::{Precision, RawLayer, RawSpec};
use tensors::{Values, WeightsFile};

use crate::Error;
use crate::gemm::Engine;
use crate::pack::{INT8_DEPTH_MAX, PackedBf16, PackedF32, PackedI8};

/// A loaded model, weights packed for the GEMM kernels.
#[derive(Debug)]
pub struct Model {
    input: usize,
    output: usize,
    layers: Vec<Layer>,
}

impl Model {
    /// Loads the description at `description` and the weights file it names.
    pub fn load(description: &Path) -> Result<Model, Error> {
        let text = std::fs::read_to_string(description).map_err(|source| Error::Io {
            path: description.to_path_buf(),
            source,
        })?;
        let bad = |message: String| Error::Description {
            path: description.to_path_buf(),
            message,
        };
        let raw = RawSpec::parse(&text).map_err(bad)?;
        let weights_path = description
            .parent()
            .unwrap_or(Path::new("."))
            .join(&raw.weights);
        let weights = WeightsFile::read(&weights_path)?;
        Model::build(raw, &weights)
    }

    fn build(raw: RawSpec, file: &WeightsFile) -> Result<Model, Error> {
        let RawSpec {
            weights: _,
            input,
            layers: raw_layers,
        } = raw;
        let mut width = input;
        let mut layers = Vec::with_capacity(raw_layers.len());
        for raw in raw_layers {
            let layer = match raw {
                RawLayer::Linear {
                    weight,
                    bias,
                    precision,
                } => {
                    let (shape, values) =
                        file.get(&weight, &[Dtype::F32, Dtype::BF16], &[None, Some(width)])?;
                    let out = shape[0];
                    let bias = bias.map(|b| file.f32(&b, &[out])).transpose()?;
                    match (precision, values) {
                        (Precision::Bf16, Values::F32(w)) => Layer::LinearBf16 {
                            weight: PackedBf16::from_n_by_k(out, width, &w),
                            bias,
                        },
                        (Precision::Bf16, Values::Bf16(w)) => Layer::LinearBf16 {
                            weight: PackedBf16::from_bf16_n_by_k(out, width, &w),
                            bias,
                        },
                        (Precision::F32, Values::F32(w)) => Layer::LinearF32 {
                            weight: PackedF32::from_n_by_k(out, width, &w),
                            bias,
                        },
                        (Precision::F32, _) => {
                            return Err(Error::WrongDtype {
                                tensor: weight,
                                expected: "F32 (precision = \"f32\")".into(),
                                found: "BF16".into(),
                            });
                        }
                        (_, Values::I8(_)) => unreachable!("asked for F32 or BF16"),
                    }
                }
                RawLayer::LinearInt8 {
                    weight,
                    scale,
                    bias,
                } => {
                    if width > INT8_DEPTH_MAX {
                        return Err(Error::WrongShape {
                            tensor: weight,
                            expected: vec![0, INT8_DEPTH_MAX],
                            found: vec![0, width],
                        });
                    }
                    let (shape, values) = file.get(&weight, &[Dtype::I8], &[None, Some(width)])?;
                    let out = shape[0];
                    let Values::I8(w) = values else {
                        unreachable!("asked for I8")
                    };
                    let scales = file.f32(&scale, &[out])?;
                    let bias = bias.map(|b| file.f32(&b, &[out])).transpose()?;
                    Layer::LinearInt8 {
                        weight: PackedI8::from_n_by_k(out, width, &w),
                        scales,
                        bias,
                        smooth: None,
                        outliers: None,
                    }
                }
                RawLayer::LayerNorm { weight, bias, eps } => Layer::LayerNorm {
                    gamma: file.f32(&weight, &[width])?,
                    beta: file.f32(&bias, &[width])?,
                    eps,
                },
                RawLayer::Relu => Layer::Relu,
                RawLayer::Gelu => Layer::Gelu,
                RawLayer::Softmax => Layer::Softmax,
            };
            width = layer.out_width(width);
            layers.push(layer);
        }
        Ok(Model {
            input,
            output: width,
            layers,
        })
    }

    /// Values per input row.
    pub fn input_width(&self) -> usize {
        self.input
    }

    /// Values per output row.
    pub fn output_width(&self) -> usize {
        self.output
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Runs `input` (whole rows of [`Model::input_width`]) through every layer.
    pub fn run(&self, engine: &Engine, input: &[f32]) -> Result<Vec<f32>, Error> {
        if !input.len().is_multiple_of(self.input) {
            return Err(Error::InputWidth {
                expected: self.input,
                found: input.len() % self.input,
            });
        }
        let rows = input.len() / self.input;
        let mut width = self.input;
        let mut x = input.to_vec();
        for layer in &self.layers {
            x = layer.apply(engine, rows, width, x);
            width = layer.out_width(width);
        }
        debug_assert_eq!(x.len(), rows * self.output);
        Ok(x)
    }
}
