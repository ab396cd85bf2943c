//! Loading models from a description and a safetensors file: a small network runs the same on
//! every path and matches a plain reference; every kind of bad file is refused with an error
//! that names the tensor at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use infer::model::layers::gelu;
use infer::quant::quantize_rows;
use infer::{Engine, Error, Features, Model, bf16};
use safetensors::{Dtype, tensor::TensorView};

const IN: usize = 40;
const HIDDEN: usize = 33;
const OUT: usize = 7;

/// Tensors by name: dtype, shape, little-endian bytes.
type Tensors = Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)>;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) % 2001) as f32 / 1000.0
                - 1.0
        })
        .collect()
}

struct Net {
    w1: Vec<f32>,
    b1: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    q: Vec<i8>,
    q_scale: Vec<f32>,
    q_bias: Vec<f32>,
}

impl Net {
    fn new() -> Net {
        Net {
            w1: values(HIDDEN * IN, 1),
            b1: values(HIDDEN, 2),
            gamma: values(HIDDEN, 3).iter().map(|v| 1.0 + v / 4.0).collect(),
            beta: values(HIDDEN, 4),
            q: values(OUT * HIDDEN, 5)
                .iter()
                .map(|v| (v * 127.0) as i8)
                .collect(),
            q_scale: values(OUT, 6)
                .iter()
                .map(|v| 0.01 + v.abs() / 100.0)
                .collect(),
            q_bias: values(OUT, 7),
        }
    }

    fn tensors(&self) -> Tensors {
        vec![
            (
                "fc1.weight",
                Dtype::F32,
                vec![HIDDEN, IN],
                f32_bytes(&self.w1),
            ),
            ("fc1.bias", Dtype::F32, vec![HIDDEN], f32_bytes(&self.b1)),
            (
                "ln.weight",
                Dtype::F32,
                vec![HIDDEN],
                f32_bytes(&self.gamma),
            ),
            ("ln.bias", Dtype::F32, vec![HIDDEN], f32_bytes(&self.beta)),
            (
                "head.weight",
                Dtype::I8,
                vec![OUT, HIDDEN],
                self.q.iter().map(|v| *v as u8).collect(),
            ),
            (
                "head.scale",
                Dtype::F32,
                vec![OUT],
                f32_bytes(&self.q_scale),
            ),
            ("head.bias", Dtype::F32, vec![OUT], f32_bytes(&self.q_bias)),
        ]
    }

    /// The model computed directly, row by row.
    fn reference(&self, x: &[f32]) -> Vec<f32> {
        let mut out = Vec::new();
        for row in x.chunks(IN) {
            let mut h: Vec<f32> = (0..HIDDEN)
                .map(|j| {
                    (0..IN)
                        .map(|k| bf16::round(row[k]) * bf16::round(self.w1[j * IN + k]))
                        .sum::<f32>()
                        + self.b1[j]
                })
                .map(gelu)
                .collect();
            let mean = h.iter().sum::<f32>() / HIDDEN as f32;
            let var = h.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / HIDDEN as f32;
            h.iter_mut().enumerate().for_each(|(j, v)| {
                *v = (*v - mean) / (var + 1e-5).sqrt() * self.gamma[j] + self.beta[j]
            });
            let mut q = vec![0i8; HIDDEN];
            let sx = quantize_rows(&h, HIDDEN, &mut q)[0];
            let logits: Vec<f32> = (0..OUT)
                .map(|j| {
                    (0..HIDDEN)
                        .map(|k| q[k] as i32 * self.q[j * HIDDEN + k] as i32)
                        .sum::<i32>() as f32
                        * sx
                        * self.q_scale[j]
                        + self.q_bias[j]
                })
                .map(|v| v.max(0.0))
                .collect();
            let max = logits.iter().fold(f32::MIN, |m, v| m.max(*v));
            let sum: f32 = logits.iter().map(|v| (v - max).exp()).sum();
            out.extend(logits.iter().map(|v| (v - max).exp() / sum));
        }
        out
    }
}

const DESCRIPTION: &str = r#"
weights = "net.safetensors"
input = 40

[[layers]]
op = "linear"
weight = "fc1.weight"
bias = "fc1.bias"

[[layers]]
op = "gelu"

[[layers]]
op = "layer_norm"
weight = "ln.weight"
bias = "ln.bias"

[[layers]]
op = "linear_int8"
weight = "head.weight"
scale = "head.scale"
bias = "head.bias"

[[layers]]
op = "relu"

[[layers]]
op = "softmax"
"#;

/// Writes the description and the weights (after `edit`) into a fresh directory.
fn write_model(
    dir: &Path,
    description: &str,
    tensors: &Tensors,
    edit_bytes: impl FnOnce(&mut Vec<u8>),
) -> PathBuf {
    let views: HashMap<String, TensorView<'_>> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            (
                name.to_string(),
                TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let mut bytes = safetensors::serialize(&views, None).unwrap();
    edit_bytes(&mut bytes);
    std::fs::write(dir.join("net.safetensors"), bytes).unwrap();
    let path = dir.join("net.toml");
    std::fs::write(&path, description).unwrap();
    path
}

fn load_with(
    tensors: Tensors,
    description: &str,
    edit_bytes: impl FnOnce(&mut Vec<u8>),
) -> Result<Model, Error> {
    let dir = tempfile::tempdir().unwrap();
    Model::load(&write_model(dir.path(), description, &tensors, edit_bytes))
}

#[test]
fn small_network_matches_the_reference_on_every_path() {
    let net = Net::new();
    let model = load_with(net.tensors(), DESCRIPTION, |_| {}).expect("load");
    assert_eq!((model.input_width(), model.output_width()), (IN, OUT));
    let x = values(5 * IN, 9);
    let want = net.reference(&x);
    let mut engines: Vec<Engine> = Features::host()
        .available_paths()
        .into_iter()
        .map(|p| Engine::new(p).unwrap())
        .collect();
    engines.push(Engine::emulated_amx());
    for engine in engines {
        let got = model.run(&engine, &x).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 2e-3,
                "{}: output {i} = {g}, reference {w}",
                engine.label()
            );
        }
    }
}

#[test]
fn missing_tensor_is_named() {
    let mut tensors = Net::new().tensors();
    tensors.retain(|t| t.0 != "ln.bias");
    let err = load_with(tensors, DESCRIPTION, |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { tensor } if tensor == "ln.bias"),
        "{err}"
    );
}

#[test]
fn weight_with_the_wrong_input_width_is_named_with_both_shapes() {
    let mut tensors = Net::new().tensors();
    tensors[0] = (
        "fc1.weight",
        Dtype::F32,
        vec![HIDDEN, IN - 1],
        f32_bytes(&values(HIDDEN * (IN - 1), 1)),
    );
    let err = load_with(tensors, DESCRIPTION, |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::WrongShape { tensor, expected, found } if tensor == "fc1.weight" && expected == &vec![HIDDEN, IN] && found == &vec![HIDDEN, IN - 1]),
        "{err}"
    );
}

#[test]
fn bias_that_does_not_match_the_output_width_is_named() {
    let mut tensors = Net::new().tensors();
    tensors[6] = (
        "head.bias",
        Dtype::F32,
        vec![OUT + 1],
        f32_bytes(&values(OUT + 1, 7)),
    );
    let err = load_with(tensors, DESCRIPTION, |_| {}).unwrap_err();
    assert!(err.to_string().contains("head.bias"), "{err}");
}

#[test]
fn float_weights_where_int8_is_required_are_named_with_the_dtype() {
    let mut tensors = Net::new().tensors();
    tensors[4] = (
        "head.weight",
        Dtype::F32,
        vec![OUT, HIDDEN],
        f32_bytes(&values(OUT * HIDDEN, 5)),
    );
    let err = load_with(tensors, DESCRIPTION, |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::WrongDtype { tensor, .. } if tensor == "head.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("I8"), "{err}");
}

#[test]
fn truncated_file_names_the_tensor_whose_bytes_are_missing() {
    let err = load_with(Net::new().tensors(), DESCRIPTION, |bytes| {
        bytes.truncate(bytes.len() - 3)
    })
    .unwrap_err();
    assert!(matches!(&err, Error::TruncatedTensor { .. }), "{err}");
    // The last tensor in the data section is the one cut short; which one that is depends on
    // the writer's ordering, so only check that a tensor is named.
    assert!(err.to_string().contains("tensor \""), "{err}");
}

#[test]
fn garbage_instead_of_safetensors_is_refused_with_the_file_name() {
    let err = load_with(Net::new().tensors(), DESCRIPTION, |bytes| {
        *bytes = b"not a model".to_vec()
    })
    .unwrap_err();
    assert!(
        matches!(&err, Error::Weights { .. }) && err.to_string().contains("net.safetensors"),
        "{err}"
    );
}

#[test]
fn unknown_layer_kind_is_refused_by_the_description() {
    let description = DESCRIPTION.replace("op = \"relu\"", "op = \"swish\"");
    let err = load_with(Net::new().tensors(), &description, |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::Description { .. }) && err.to_string().contains("swish"),
        "{err}"
    );
}

#[test]
fn bf16_weights_load_for_a_bf16_linear_layer() {
    let net = Net::new();
    let mut tensors = net.tensors();
    let bits: Vec<u8> = net
        .w1
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect();
    tensors[0] = ("fc1.weight", Dtype::BF16, vec![HIDDEN, IN], bits);
    let model = load_with(tensors, DESCRIPTION, |_| {}).unwrap();
    let x = values(2 * IN, 9);
    let got = model
        .run(&Engine::new(infer::Path::Scalar).unwrap(), &x)
        .unwrap();
    let want = net.reference(&x);
    assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 2e-3));
}

#[test]
fn input_of_the_wrong_width_is_refused() {
    let model = load_with(Net::new().tensors(), DESCRIPTION, |_| {}).unwrap();
    let err = model
        .run(&Engine::new(infer::Path::Scalar).unwrap(), &[0.0; IN + 1])
        .unwrap_err();
    assert!(
        matches!(err, Error::InputWidth { expected: IN, .. }),
        "{err}"
    );
}
