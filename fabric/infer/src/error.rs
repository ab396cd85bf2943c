//! The crate's error type: operating errors a caller can act on (a kernel path this CPU lacks,
//! a kernel that refused AMX, a model file that does not match its description).

use std::path::PathBuf;

/// Everything the engine and the model loader can refuse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel path was requested that this processor (or its kernel) cannot run.
    #[error("kernel path {path} is not available on this CPU (has: {available})")]
    PathUnavailable { path: String, available: String },
    /// `FABRIC_INFER_KERNEL` held something other than a known path name.
    #[error("FABRIC_INFER_KERNEL={value:?} is not one of amx, avx512, avx2, scalar, auto")]
    BadKernelOverride { value: String },
    /// The Linux kernel refused to grant this process the AMX tile data state.
    #[error("the kernel refused AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM): {reason}")]
    AmxPermission { reason: String },
    /// A model file could not be read.
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML description is malformed or inconsistent.
    #[error("model description {path}: {message}")]
    Description { path: PathBuf, message: String },
    /// The safetensors file itself is malformed (bad header, truncated, overlapping data).
    #[error("weights file {path}: {message}")]
    Weights { path: PathBuf, message: String },
    /// A tensor named by the description is absent from the weights file.
    #[error("tensor {tensor:?} is missing from the weights file")]
    MissingTensor { tensor: String },
    /// A tensor has a shape the description does not allow.
    #[error("tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    WrongShape {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor has a dtype the layer cannot use.
    #[error("tensor {tensor:?} has dtype {found}, expected {expected}")]
    WrongDtype {
        tensor: String,
        expected: String,
        found: String,
    },
    /// A tensor's bytes extend past the end of the file.
    #[error(
        "tensor {tensor:?} is truncated: its data ends at byte {end} but the file has {available}"
    )]
    TruncatedTensor {
        tensor: String,
        end: usize,
        available: usize,
    },
    /// An int8 encoder was asked for without a calibration that fits it.
    #[error("calibration: {0}")]
    Calibration(String),
    /// A tokenizer file could not be read or used.
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// One input of a batch cannot be run (too long, empty, an id outside the vocabulary).
    #[error("input {index}: {message}")]
    Input { index: usize, message: String },
    /// Input handed to a model does not have the model's input width.
    #[error("input has {found} values per row, the model expects {expected}")]
    InputWidth { expected: usize, found: usize },
}
