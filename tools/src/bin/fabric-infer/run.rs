//! `fabric-infer run`: runs a dense model (TOML description + safetensors weights) over a
//! file of input vectors and writes the outputs, in batches, with a progress bar.
//!
//! Input and output formats: `f32` (raw little-endian f32, whole rows back to back) or `jsonl`
//! (one JSON array of numbers per line). The format follows the file extension unless given.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use infer::Model;

/// Most rows run through the model at once.
const BATCH_ROWS_MAX: usize = 1 << 16;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    F32,
    Jsonl,
}

#[derive(Parser)]
pub(crate) struct Args {
    /// The model description (TOML); it names its safetensors file.
    #[arg(long)]
    model: PathBuf,
    /// Input vectors.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the outputs.
    #[arg(long)]
    output: PathBuf,
    /// Input format (default: from the extension, `.jsonl` or anything else = f32).
    #[arg(long, value_enum)]
    input_format: Option<Format>,
    /// Output format (default: from the extension).
    #[arg(long, value_enum)]
    output_format: Option<Format>,
    /// Rows per batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[command(flatten)]
    kernel: super::Kernel,
}

fn format_of(path: &Path, given: Option<Format>) -> Format {
    given.unwrap_or(if path.extension().is_some_and(|e| e == "jsonl") {
        Format::Jsonl
    } else {
        Format::F32
    })
}

/// Reads every input row (flattened) from the file.
fn read_rows(path: &Path, format: Format, width: usize) -> Result<Vec<f32>> {
    let file = File::open(path).with_context(|| format!("open input {}", path.display()))?;
    let mut values = Vec::new();
    match format {
        Format::F32 => {
            let mut bytes = Vec::new();
            BufReader::new(file)
                .read_to_end(&mut bytes)
                .context("read input")?;
            ensure!(
                bytes.len() % (4 * width) == 0,
                "input has {} bytes, not whole rows of {width} f32",
                bytes.len()
            );
            values.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            );
        }
        Format::Jsonl => {
            for (i, line) in BufReader::new(file).lines().enumerate() {
                let line = line.context("read input")?;
                if line.trim().is_empty() {
                    continue;
                }
                let row: Vec<f32> = serde_json::from_str(&line)
                    .with_context(|| format!("parse input line {}", i + 1))?;
                ensure!(
                    row.len() == width,
                    "input line {} has {} values, the model expects {width}",
                    i + 1,
                    row.len()
                );
                values.extend(row);
            }
        }
    }
    Ok(values)
}

fn write_rows(out: &mut impl Write, format: Format, width: usize, values: &[f32]) -> Result<()> {
    match format {
        Format::F32 => values
            .iter()
            .try_for_each(|v| out.write_all(&v.to_le_bytes()))?,
        Format::Jsonl => {
            for row in values.chunks(width) {
                serde_json::to_writer(&mut *out, row)?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

pub(crate) fn run(args: Args) -> Result<()> {
    ensure!(
        (1..=BATCH_ROWS_MAX).contains(&args.batch),
        "--batch must be 1..={BATCH_ROWS_MAX}"
    );
    let engine = args.kernel.engine()?;
    let model =
        Model::load(&args.model).with_context(|| format!("load model {}", args.model.display()))?;
    let (width, out_width) = (model.input_width(), model.output_width());
    let input = read_rows(
        &args.input,
        format_of(&args.input, args.input_format),
        width,
    )?;
    let rows = input.len() / width;
    if rows == 0 {
        bail!("{} holds no input rows", args.input.display());
    }
    let out_format = format_of(&args.output, args.output_format);
    let mut out = BufWriter::new(
        File::create(&args.output)
            .with_context(|| format!("create output {}", args.output.display()))?,
    );

    let bar = ProgressBar::new(rows as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} rows ({per_sec}, eta {eta})",
    )?);
    for batch in input.chunks(args.batch * width) {
        let y = model.run(&engine, batch).context("run model")?;
        write_rows(&mut out, out_format, out_width, &y).context("write output")?;
        bar.inc((batch.len() / width) as u64);
    }
    out.flush().context("flush output")?;
    bar.finish_and_clear();
    eprintln!(
        "fabric-infer: {rows} rows × {width} → {out_width} on the {} path, written to {}",
        engine.label(),
        args.output.display()
    );
    Ok(())
}
