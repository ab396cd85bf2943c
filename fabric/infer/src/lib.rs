//! Fabric's inference engine: dense GEMM on AMX tiles with run-time fallbacks, and a small
//! runtime for dense models whose weights live in safetensors files.
//!
//! Layers, from the bottom:
//! - [`cpu`] finds out what the processor can do and picks a kernel [`Path`] (AMX, AVX-512,
//!   AVX2 or portable scalar), honouring the `FABRIC_INFER_KERNEL` override.
//! - [`pack`] lays weights out once in the tile-friendly blocked layout every path shares
//!   (B in the VNNI pair/quad layout, padded to whole tiles).
//! - [`gemm`] is the entry point: [`Engine`] multiplies activations by packed weights in f32,
//!   bf16 (f32 accumulate) or int8 (i32 accumulate), blocking for cache and fanning out over
//!   the threads of a [`team`] for large shapes.
//! - [`model`] loads a TOML description plus safetensors weights and runs it row by row.
//! - [`bert`] is a BERT encoder for sentence embeddings (all-MiniLM-L6-v2) on that engine.
//!
//! Start reading at [`gemm::Engine`], then `gemm/driver.rs` (blocking and threads) and
//! `amx/micro.rs` (the tile microkernel).

mod aligned;
pub mod amx;
pub mod bert;
pub mod bf16;
pub mod cpu;
pub mod embedder;
mod error;
pub mod fastmath;
pub mod gemm;
mod kernels;
pub mod memory;
pub mod model;
pub mod pack;
pub mod quant;
mod scratch;
pub mod store;
pub mod team;

pub use cpu::{Features, Path};
pub use error::Error;
pub use gemm::{Engine, Parallelism};
pub use model::Model;
pub use pack::{PackedBf16, PackedF32, PackedI8};
