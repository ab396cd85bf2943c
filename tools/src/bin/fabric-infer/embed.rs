//! `fabric-infer embed`: text to vectors with a stored model.
//!
//! Input: `lines` (every line one text, empty lines included, so line n is vector n) or
//! `jsonl:FIELD` (one JSON object a line, the text in its string FIELD). Output by extension:
//! `.jsonl`, one object a text (`index`, `model`, `model_id`, `vector`); anything else a
//! safetensors file with one tensor `embeddings` (texts × dims, F32 or F16) and the model's
//! name, id and dtype in its metadata.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use infer::bert::Dtype;
use infer::embedder::Embedder;

use super::{Kernel, StoreDir};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Vectors {
    F32,
    F16,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The stored model's name.
    #[arg(long)]
    model: String,
    /// The texts.
    #[arg(long)]
    input: PathBuf,
    /// `lines` or `jsonl:FIELD`.
    #[arg(long, default_value = "lines")]
    format: String,
    /// Where to write the vectors (`.jsonl`, else safetensors).
    #[arg(long)]
    output: PathBuf,
    /// How the model computes: f32, bf16 or int8.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: Dtype,
    /// How the vectors are written.
    #[arg(long, value_enum, default_value = "f32")]
    vectors: Vectors,
    /// Texts per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[command(flatten)]
    store: StoreDir,
    #[command(flatten)]
    kernel: Kernel,
}

fn parse_dtype(s: &str) -> Result<Dtype, String> {
    Dtype::parse(s).ok_or_else(|| format!("{s:?} is not f32, bf16 or int8"))
}

/// The texts of `path` in `format`.
fn read_texts(path: &Path, format: &str) -> Result<Vec<String>> {
    let file = File::open(path).with_context(|| format!("open input {}", path.display()))?;
    let lines = BufReader::new(file).lines();
    if format == "lines" {
        return lines
            .enumerate()
            .map(|(i, l)| l.with_context(|| format!("{} line {}", path.display(), i + 1)))
            .collect();
    }
    let Some(field) = format.strip_prefix("jsonl:").filter(|f| !f.is_empty()) else {
        bail!("--format {format:?}: use lines or jsonl:FIELD");
    };
    let mut texts = Vec::new();
    for (i, line) in lines.enumerate() {
        let at = || format!("{} line {}", path.display(), i + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).with_context(at)?;
        let Some(text) = v.get(field).and_then(|t| t.as_str()) else {
            bail!("{}: no string field {field:?}", at());
        };
        texts.push(text.to_string());
    }
    Ok(texts)
}

/// `x` rounded to the nearest f16 (ties to even), as its bits.
fn f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

pub(crate) fn run(args: Args) -> Result<()> {
    ensure!((1..=4096).contains(&args.batch), "--batch must be 1..=4096");
    let texts = read_texts(&args.input, &args.format)?;
    ensure!(!texts.is_empty(), "{} holds no texts", args.input.display());
    let engine = args.kernel.engine()?;
    let model = args.store.store().open(&args.model)?;
    let embedder = Embedder::open(&model, &engine, args.dtype)?;
    let dims = embedder.dims();

    let bar = ProgressBar::new(texts.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} texts ({per_sec}, eta {eta})",
    )?);
    let mut vectors = Vec::with_capacity(texts.len() * dims);
    for batch in texts.chunks(args.batch) {
        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        vectors.extend(embedder.embed(&engine, &refs).context("embed")?);
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    if args.vectors == Vectors::F16 {
        for v in vectors.iter_mut() {
            *v = half::f16::from_f32(*v).to_f32();
        }
    }
    let out = &args.output;
    if out.extension().is_some_and(|e| e == "jsonl") {
        let mut w =
            BufWriter::new(File::create(out).with_context(|| format!("create {}", out.display()))?);
        for (i, v) in vectors.chunks_exact(dims).enumerate() {
            let line = serde_json::json!({
                "index": i,
                "model": embedder.name(),
                "model_id": embedder.id(),
                "vector": v,
            });
            serde_json::to_writer(&mut w, &line)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    } else {
        let (dtype, bytes): (safetensors::Dtype, Vec<u8>) = match args.vectors {
            Vectors::F32 => (
                safetensors::Dtype::F32,
                vectors.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            Vectors::F16 => (
                safetensors::Dtype::F16,
                vectors
                    .iter()
                    .flat_map(|v| f16_bits(*v).to_le_bytes())
                    .collect(),
            ),
        };
        let view = safetensors::tensor::TensorView::new(dtype, vec![texts.len(), dims], &bytes)?;
        let metadata = HashMap::from([
            ("model".to_string(), embedder.name().to_string()),
            ("model_id".to_string(), embedder.id().to_string()),
            ("dtype".to_string(), embedder.dtype().to_string()),
        ]);
        safetensors::serialize_to_file([("embeddings", view)], Some(metadata), out)
            .with_context(|| format!("write {}", out.display()))?;
    }
    eprintln!(
        "fabric-infer: {} texts → {dims}-d vectors with {} ({}, {} path), model id {}, written to {}",
        texts.len(),
        embedder.name(),
        embedder.dtype(),
        engine.label(),
        embedder.id(),
        out.display()
    );
    Ok(())
}
