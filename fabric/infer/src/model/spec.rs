//! The model description: a small TOML file naming the weights file and listing the layers in
//! order. Parsed raw ([`RawSpec`], exactly the file's fields, unknown fields refused), then
//! checked into the loader's input.
//!
//! ```toml
//! weights = "encoder.safetensors"   # relative to this file
//! input = 384                       # values per input row
//!
//! [[layers]]
//! op = "linear"                     # weight [out, in] F32 or BF16, bias [out] F32 (optional)
//! weight = "fc1.weight"
//! bias = "fc1.bias"
//! precision = "bf16"                # "bf16" (default; AMX tiles) or "f32"
//!
//! [[layers]]
//! op = "gelu"                       # also "relu", "softmax"
//!
//! [[layers]]
//! op = "layer_norm"                 # weight and bias [width] F32
//! weight = "ln.weight"
//! bias = "ln.bias"
//! eps = 1e-5
//!
//! [[layers]]
//! op = "linear_int8"                # weight [out, in] I8, scale [out] F32, bias [out] F32
//! weight = "q.weight"
//! scale = "q.scale"
//! ```

use serde::Deserialize;

/// Most layers a description may list.
pub const LAYERS_MAX: usize = 1024;

/// The description exactly as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub weights: String,
    pub input: usize,
    pub layers: Vec<RawLayer>,
}

/// One layer as written; `op` selects the variant.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawLayer {
    Linear {
        weight: String,
        bias: Option<String>,
        #[serde(default)]
        precision: Precision,
    },
    LinearInt8 {
        weight: String,
        scale: String,
        bias: Option<String>,
    },
    LayerNorm {
        weight: String,
        bias: String,
        #[serde(default = "default_eps")]
        eps: f32,
    },
    Relu,
    Gelu,
    Softmax,
}

fn default_eps() -> f32 {
    1e-5
}

/// Arithmetic of a float Linear layer.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Inputs and weights rounded to bf16, f32 accumulation (AMX tiles where present).
    #[default]
    Bf16,
    /// Full f32.
    F32,
}

impl RawSpec {
    /// Parses and checks the limits that need no weights: non-zero input, some layers, not too
    /// many, positive LayerNorm epsilon.
    pub fn parse(text: &str) -> Result<RawSpec, String> {
        let spec: RawSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        if spec.input == 0 {
            return Err("`input` must be at least 1".into());
        }
        if spec.layers.is_empty() || spec.layers.len() > LAYERS_MAX {
            return Err(format!(
                "needs 1..={LAYERS_MAX} layers, has {}",
                spec.layers.len()
            ));
        }
        for (i, layer) in spec.layers.iter().enumerate() {
            if let RawLayer::LayerNorm { eps, .. } = layer
                && !(*eps > 0.0 && eps.is_finite())
            {
                return Err(format!("layer {i}: eps must be positive, is {eps}"));
            }
        }
        Ok(spec)
    }
}
