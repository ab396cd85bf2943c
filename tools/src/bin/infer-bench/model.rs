//! `infer-bench --model NAME`: a stored sentence-embedding model in f32, bf16 and int8 beside
//! ONNX Runtime fp32 and dynamic int8 (per-channel weights) built from the same weights, on
//! the same threads in the same run: sentences per second at batch 32 × 128 tokens, latency
//! at batch 1 × 16 tokens, tokenisation timed apart, and each side's worst cosine against the
//! f32 vectors (which match a float64 reference within 1e-4, `fabric/infer/tests/minilm.rs`)
//! over the test corpus. ONNX Runtime runs through `tools/scripts/ort_minilm.py`.

use anyhow::{Context, Result, bail};
use infer::Engine;
use infer::bert::{CALIBRATION_TEXTS, Dtype};
use infer::embedder::Embedder;
use infer::store::Store;

use super::paired::{OrtServer, summary};
use super::{Args, median_seconds};

/// The texts accuracy is compared on.
const CORPUS: &str = include_str!("../../../../fabric/infer/tests/data/corpus.txt");
/// The shapes timed: (batch, tokens per sequence).
const THROUGHPUT: (usize, usize) = (32, 128);
const LATENCY: (usize, usize) = (1, 16);

/// `batch` sequences of exactly `tokens` ids: [CLS], ids of running text, [SEP].
fn sequences(embedder: &Embedder, batch: usize, tokens: usize) -> Result<Vec<Vec<u32>>> {
    let text: Vec<&str> = CALIBRATION_TEXTS.lines().collect();
    let ids = embedder.tokenize(&[&text.join(" ")])?.remove(0);
    let (cls, sep) = (ids[0], *ids.last().expect("ids"));
    let body = &ids[1..ids.len() - 1];
    Ok((0..batch)
        .map(|b| {
            let mut s = vec![cls];
            s.extend(body.iter().cycle().skip(b * 7).take(tokens - 2));
            s.push(sep);
            s
        })
        .collect())
}

/// Texts of about `tokens` tokens each (for timing the tokenizer on what the model runs).
fn texts_of(tokens: usize, batch: usize) -> Vec<String> {
    let words: Vec<&str> = CALIBRATION_TEXTS.split_whitespace().collect();
    // About 0.8 words a token in this prose.
    let per = tokens * 8 / 10;
    (0..batch)
        .map(|b| {
            words
                .iter()
                .cycle()
                .skip(b * 11)
                .take(per)
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn corpus() -> Vec<&'static str> {
    CORPUS.lines().filter(|l| !l.trim().is_empty()).collect()
}

fn worst_cosine(a: &[f32], b: &[f32], dims: usize) -> f64 {
    a.chunks_exact(dims)
        .zip(b.chunks_exact(dims))
        .map(|(x, y)| {
            let dot: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| f64::from(*p) * f64::from(*q))
                .sum();
            let nx: f64 = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|q| f64::from(*q).powi(2)).sum::<f64>().sqrt();
            dot / (nx * ny)
        })
        .fold(1.0, f64::min)
}

/// One side's figures.
struct Row {
    label: String,
    sentences_per_s: f64,
    latency_ms: f64,
    worst_cosine: Option<f64>,
}

/// ONNX Runtime's rows, each with its vectors of the corpus.
type OrtRows = Vec<(Row, Vec<f32>)>;

/// ONNX Runtime's rows (`fp32`, `int8`) and vectors of the corpus, and the script left
/// serving for paired rounds; or why there are none.
fn onnx_runtime(args: &Args, name: &str, threads: usize) -> Result<(OrtRows, OrtServer), String> {
    let store = Store::new(&args.store);
    let model = store.open(name).map_err(|e| e.to_string())?;
    // The ONNX files it builds, kept between runs (they depend only on the weights).
    let cache =
        std::env::temp_dir().join(format!("infer-bench-ort-{}", &model.id(Dtype::F32)[..16]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ort_minilm.py");
    let request = serde_json::json!({
        "model_dir": model.path(""),
        "cache_dir": cache,
        "threads": threads,
        "runs": args.runs,
        "texts": corpus(),
        "bench": [
            {"batch": THROUGHPUT.0, "tokens": THROUGHPUT.1},
            {"batch": LATENCY.0, "tokens": LATENCY.1},
        ],
    });
    let (server, lines) = OrtServer::start(script, request).map_err(|e| format!("{e:#}"))?;
    let stdout = lines.concat();
    let mut rows = Vec::new();
    for kind in ["fp32", "int8"] {
        let mut row = Row {
            label: format!("onnxruntime {kind}"),
            sentences_per_s: f64::NAN,
            latency_ms: f64::NAN,
            worst_cosine: None,
        };
        let mut vectors = Vec::new();
        for line in stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            if v["kind"] != kind {
                continue;
            }
            if let Some(e) = v["embeddings"].as_array() {
                vectors = e
                    .iter()
                    .flat_map(|r| r.as_array().cloned().unwrap_or_default())
                    .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
                    .collect();
            } else if v["batch"] == THROUGHPUT.0 && v["tokens"] == THROUGHPUT.1 {
                row.sentences_per_s = v["sentences_per_s"].as_f64().unwrap_or(f64::NAN);
            } else if v["batch"] == LATENCY.0 && v["tokens"] == LATENCY.1 {
                row.latency_ms = v["median_s"].as_f64().unwrap_or(f64::NAN) * 1e3;
            }
        }
        rows.push((row, vectors));
    }
    Ok((rows, server))
}

pub(crate) fn run(args: &Args, name: &str, threads: usize) -> Result<()> {
    let engine = Engine::detect()?;
    let model = Store::new(&args.store)
        .open(name)
        .with_context(|| format!("open model {name} in {}", args.store.display()))?;
    let host = infer::Features::host();
    println!(
        "infer-bench --model {name}: cpu features {host}; {} path; {threads} threads; median of {} runs",
        engine.label(),
        args.runs
    );
    let texts = corpus();
    let mut rows = Vec::new();
    let mut f32_vectors = Vec::new();
    let mut dims = 0;
    let mut tokenize_ms = 0.0;
    let mut f32_batch_ms = 0.0;
    let mut kept = std::collections::HashMap::new();
    let mut wanted = Vec::new();
    for name in &args.dtype {
        wanted.push(
            Dtype::parse(name)
                .with_context(|| format!("--dtype {name}: one of f32, bf16, int8"))?,
        );
    }
    for dtype in [Dtype::F32, Dtype::Bf16, Dtype::Int8] {
        if !wanted.is_empty() && dtype != Dtype::F32 && !wanted.contains(&dtype) {
            continue;
        }
        let timed = wanted.is_empty() || wanted.contains(&dtype);
        let embedder = Embedder::open(&model, &engine, dtype)?;
        let embedder = kept.entry(dtype).or_insert(embedder);
        dims = embedder.dims();
        let big = sequences(embedder, THROUGHPUT.0, THROUGHPUT.1)?;
        let small = sequences(embedder, LATENCY.0, LATENCY.1)?;
        let runs = if timed { args.runs } else { 1 };
        let batch_s = median_seconds(runs, || {
            embedder.embed_ids(&engine, &big).expect("embed");
        });
        let latency_s = median_seconds(runs, || {
            embedder.embed_ids(&engine, &small).expect("embed");
        });
        let vectors = embedder.embed(&engine, &texts)?;
        let worst = if dtype == Dtype::F32 {
            f32_vectors = vectors;
            f32_batch_ms = batch_s * 1e3;
            let long = texts_of(THROUGHPUT.1, THROUGHPUT.0);
            let refs: Vec<&str> = long.iter().map(String::as_str).collect();
            tokenize_ms = median_seconds(args.runs, || {
                embedder.tokenize(&refs).expect("tokenize");
            }) * 1e3;
            None
        } else {
            Some(worst_cosine(&f32_vectors, &vectors, dims))
        };
        rows.push(Row {
            label: format!("fabric {dtype}"),
            sentences_per_s: THROUGHPUT.0 as f64 / batch_s,
            latency_ms: latency_s * 1e3,
            worst_cosine: worst,
        });
    }
    let ort = if args.no_ort {
        Err("--no-ort".to_string())
    } else {
        onnx_runtime(args, name, threads)
    };
    let mut ort_rows = Vec::new();
    let mut server = None;
    match ort {
        Ok((o, s)) => {
            server = Some(s);
            for (mut row, vectors) in o {
                if vectors.len() == f32_vectors.len() {
                    row.worst_cosine = Some(worst_cosine(&f32_vectors, &vectors, dims));
                }
                ort_rows.push(row);
            }
        }
        Err(why) => println!("skip: onnxruntime comparison: {why}"),
    }
    println!(
        "{:<18} {:>22} {:>20} {:>26}",
        "",
        format!("sent/s at {}×{}", THROUGHPUT.0, THROUGHPUT.1),
        format!("ms at {}×{}", LATENCY.0, LATENCY.1),
        "worst cosine vs fabric f32"
    );
    for r in rows.iter().chain(&ort_rows) {
        println!(
            "{:<18} {:>22.1} {:>20.2} {:>26}",
            r.label,
            r.sentences_per_s,
            r.latency_ms,
            r.worst_cosine
                .map_or("-".to_string(), |c| format!("{c:.5}"))
        );
    }
    println!(
        "tokenisation: {tokenize_ms:.2} ms for {} texts of about {} tokens ({:.1} % of the f32 batch's {f32_batch_ms:.1} ms)",
        THROUGHPUT.0,
        THROUGHPUT.1,
        100.0 * tokenize_ms / (tokenize_ms + f32_batch_ms)
    );
    if ort_rows.len() == 2 {
        let (o32, o8) = (&ort_rows[0], &ort_rows[1]);
        let ours = |dtype: Dtype| rows.iter().find(|r| r.label == format!("fabric {dtype}"));
        println!("ratios (same run):");
        if let Some(f) = ours(Dtype::F32)
            .filter(|_| args.dtype.is_empty() || args.dtype.iter().any(|d| d == "f32"))
        {
            println!(
                "  f32 / ORT fp32 throughput {:.2} (target >= 1.0); batch-1 latency ORT fp32 / f32 {:.2} (target >= 1.0)",
                f.sentences_per_s / o32.sentences_per_s,
                o32.latency_ms / f.latency_ms
            );
        }
        if let Some(i) = ours(Dtype::Int8) {
            println!(
                "  int8 / ORT int8 throughput {:.2} (target >= 1.0, at equal or better cosine: {} vs {}); batch-1 latency ORT int8 / int8 {:.2}",
                i.sentences_per_s / o8.sentences_per_s,
                i.worst_cosine.map_or("-".into(), |c| format!("{c:.5}")),
                o8.worst_cosine.map_or("-".into(), |c| format!("{c:.5}")),
                o8.latency_ms / i.latency_ms
            );
        }
    }
    if rows.is_empty() {
        bail!("nothing measured");
    }
    if let Some(server) = &mut server {
        paired_rounds(args, &engine, &kept, server)?;
    }
    Ok(())
}

/// Rounds in which each shape is timed by us and then by ONNX Runtime (see `paired`).
const PAIRED_ROUNDS: usize = 7;
/// The pause between one side's timing and the other's.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Times f32 and int8 against ONNX Runtime's fp32 and int8 in [`PAIRED_ROUNDS`] paired
/// rounds and prints the median and range of each ratio.
fn paired_rounds(
    args: &Args,
    engine: &Engine,
    kept: &std::collections::HashMap<Dtype, Embedder>,
    server: &mut OrtServer,
) -> Result<()> {
    // A round's batch timings are a few runs each: seven rounds of the full count would take
    // minutes.
    let batch_runs = args.runs.div_ceil(3).max(3);
    println!(
        "paired rounds ({PAIRED_ROUNDS}; in each, a shape timed by us, then at once by ONNX Runtime; {batch_runs} runs of the batch, {} of batch 1):",
        args.runs
    );
    for (dtype, kind) in [(Dtype::F32, "fp32"), (Dtype::Int8, "int8")] {
        let Some(embedder) = kept.get(&dtype) else {
            continue;
        };
        let big = sequences(embedder, THROUGHPUT.0, THROUGHPUT.1)?;
        let small = sequences(embedder, LATENCY.0, LATENCY.1)?;
        let (mut throughput, mut latency) = (Vec::new(), Vec::new());
        // Each side's threads spin a while after its last run (ONNX Runtime's by default,
        // ours for `infer::team::SPIN_DEFAULT`): a pause lets them stop before the other
        // side is timed.
        let settle = || std::thread::sleep(SETTLE);
        for _ in 0..PAIRED_ROUNDS {
            let ours = median_seconds(batch_runs, || {
                embedder.embed_ids(engine, &big).expect("embed");
            });
            settle();
            let theirs = server.time(kind, THROUGHPUT, batch_runs)?;
            settle();
            throughput.push(theirs / ours);
            let ours = median_seconds(args.runs, || {
                embedder.embed_ids(engine, &small).expect("embed");
            });
            settle();
            let theirs = server.time(kind, LATENCY, args.runs)?;
            settle();
            latency.push(theirs / ours);
        }
        println!(
            "  {dtype} / ORT {kind}: throughput {} (target >= 1.0); batch-1 latency ORT / ours {} (target >= 1.0)",
            summary(&throughput),
            summary(&latency)
        );
    }
    Ok(())
}
