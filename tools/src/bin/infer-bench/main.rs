//! `infer-bench`: GFLOP/s (f32, bf16) and GOP/s (int8) of the inference GEMMs on every kernel
//! path this CPU has, the AMX register-only ceiling, and ONNX Runtime on the same shapes and
//! thread count, with the ratios the engine is judged by. Prints medians of `--runs` timings.
//!
//! ONNX Runtime runs through `tools/scripts/ort_gemm.py` when python3 can import onnxruntime,
//! onnx and numpy; otherwise a skip line is printed.
//!
//! With `--model NAME`, the whole sentence-embedding model instead (`model.rs`).

mod model;
mod paired;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use infer::amx::TileConfig;
use infer::amx::hw::HwTiles;
use infer::team::Team;
use infer::{Engine, Features, PackedBf16, PackedF32, PackedI8, Path};

/// Largest shape (multiply-adds) the scalar path is timed on: it is ~100× slower.
const SCALAR_MACS_MAX: usize = 1 << 26;
/// Iterations of the register-only tile loop per thread (4 tdp each).
const CEILING_ITERS: u64 = 1 << 20;

#[derive(Parser)]
#[command(about = "Benchmark the AMX/AVX GEMM paths against each other and ONNX Runtime")]
struct Args {
    /// Timed runs per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Which shapes: square, transformer, or all.
    #[arg(long, default_value = "all")]
    shapes: String,
    /// Skip shapes above 2^31 multiply-adds (4096³ and friends).
    #[arg(long)]
    quick: bool,
    /// Worker threads for our GEMMs and for ONNX Runtime (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Do not run ONNX Runtime.
    #[arg(long)]
    no_ort: bool,
    /// Benchmark this stored embedding model (f32, bf16, int8) against ONNX Runtime instead.
    #[arg(long)]
    model: Option<String>,
    /// The model store, for `--model`.
    #[arg(long, env = "FABRIC_MODEL_STORE", default_value = "models")]
    store: std::path::PathBuf,
    /// With `--model`: time only these dtypes (comma-separated; default f32,bf16,int8). f32
    /// always runs too, as the reference the others' cosines are measured against.
    #[arg(long, value_delimiter = ',')]
    dtype: Vec<String>,
}

#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    k: usize,
    n: usize,
    kind: &'static str,
}

impl Shape {
    fn macs(&self) -> usize {
        self.m * self.k * self.n
    }
}

fn shapes(which: &str, quick: bool) -> Result<Vec<Shape>> {
    let square = [512, 1024, 2048, 4096].map(|s| Shape {
        m: s,
        k: s,
        n: s,
        kind: "square",
    });
    // Encoder layers: attention projections (K = N = d) and MLP up/down (4d), d = 384 / 768 / 1024.
    let transformer = [
        (128, 384, 384),
        (128, 384, 1536),
        (512, 768, 768),
        (512, 768, 3072),
        (512, 3072, 768),
        (4096, 1024, 4096),
    ]
    .map(|(m, k, n)| Shape {
        m,
        k,
        n,
        kind: "transformer",
    });
    let mut out: Vec<Shape> = match which {
        "square" => square.to_vec(),
        "transformer" => transformer.to_vec(),
        "all" => square.into_iter().chain(transformer).collect(),
        other => bail!("--shapes must be square, transformer or all, not {other:?}"),
    };
    if quick {
        out.retain(|s| s.macs() <= 1 << 31);
    }
    Ok(out)
}

/// Warm-up before a timing: at least one call, and calls for this long. A worker thread that
/// slept (the engine's, between two timings) took 2–8 ms to run again after it was woken on
/// these virtual machines, and a GEMM of 100 µs timed meanwhile ran on one thread.
const WARM_UP: std::time::Duration = std::time::Duration::from_millis(50);

pub(crate) fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    let warming = Instant::now();
    f(); // page faults, threads woken
    while warming.elapsed() < WARM_UP {
        f();
    }
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn pattern_f32(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn pattern_i8(len: usize) -> Vec<i8> {
    (0..len).map(|i| ((i * 7919) % 255) as i32 as i8).collect()
}

/// Our GEMM on `path`, family `family`: returns G(FL)OP/s.
fn ours(path: Path, family: &str, s: Shape, runs: usize) -> Result<f64> {
    let engine = Engine::new(path)?;
    let secs = match family {
        "f32" => {
            let (a, w) = (
                pattern_f32(s.m * s.k),
                PackedF32::from_k_by_n(s.k, s.n, &pattern_f32(s.k * s.n)),
            );
            let mut c = vec![0f32; s.m * s.n];
            median_seconds(runs, || engine.f32(s.m, &a, &w, &mut c))
        }
        "bf16" => {
            let (a, w) = (
                pattern_f32(s.m * s.k),
                PackedBf16::from_k_by_n(s.k, s.n, &pattern_f32(s.k * s.n)),
            );
            let mut c = vec![0f32; s.m * s.n];
            median_seconds(runs, || engine.bf16(s.m, &a, &w, &mut c))
        }
        "int8" => {
            let (a, w) = (
                pattern_i8(s.m * s.k),
                PackedI8::from_k_by_n(s.k, s.n, &pattern_i8(s.k * s.n)),
            );
            let mut c = vec![0i32; s.m * s.n];
            median_seconds(runs, || engine.i8(s.m, &a, &w, &mut c))
        }
        other => bail!("unknown family {other}"),
    };
    Ok(2.0 * s.macs() as f64 / secs / 1e9)
}

/// The register-only tile loop on every worker thread at once: G(FL)OP/s ceiling.
fn ceiling(family: &str, runs: usize) -> Result<f64> {
    // One tdp on 16×16 outputs over a 64-byte K row: bf16 K = 32, int8 K = 64.
    let ops_per_tdp = 2.0 * 16.0 * 16.0 * if family == "bf16" { 32.0 } else { 64.0 };
    let threads = infer::team::threads();
    HwTiles::configure(&TileConfig::blocks())?; // surfaces a permission error here, once
    let loop_on_tiles = || {
        let mut tiles =
            HwTiles::configure(&TileConfig::blocks()).expect("permission granted above");
        if family == "bf16" {
            tiles.register_only_bf16(CEILING_ITERS)
        } else {
            tiles.register_only_i8(CEILING_ITERS)
        }
    };
    let secs = median_seconds(runs, || {
        // One loop per thread, each on a thread of its own.
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(loop_on_tiles);
            }
        });
    });
    Ok(threads as f64 * CEILING_ITERS as f64 * 4.0 * ops_per_tdp / secs / 1e9)
}

/// ONNX Runtime G(FL)OP/s keyed by (m, k, n, kind).
type OrtResults = HashMap<(usize, usize, usize, String), f64>;

/// Runs `script` with `request` as JSON on its stdin; its stdout, or why it failed (the
/// script's last line on stderr).
pub(crate) fn python_json(script: &str, request: &serde_json::Value) -> Result<String, String> {
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(request.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{script} exited with {}: {}",
            out.status,
            stderr.lines().last().unwrap_or("")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// ONNX Runtime timings, or why they are missing.
fn onnx_runtime(shapes: &[Shape], threads: usize, runs: usize) -> Result<OrtResults, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ort_gemm.py");
    let probe = Command::new("python3")
        .args(["-c", "import onnxruntime, onnx, numpy"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(format!(
                "python3 cannot import onnxruntime/onnx/numpy ({})",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
        }
        Err(e) => return Err(format!("python3 not runnable: {e}")),
    }
    let request = serde_json::json!({ "threads": threads, "runs": runs, "shapes": shapes.iter().map(|s| [s.m, s.k, s.n]).collect::<Vec<_>>() });
    let stdout = python_json(script, &request)?;
    let mut result = HashMap::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let key = |f: &str| v[f].as_u64().unwrap_or(0) as usize;
        let (m, k, n) = (key("m"), key("k"), key("n"));
        let secs = v["seconds"].as_f64().unwrap_or(f64::NAN);
        result.insert(
            (m, k, n, v["kind"].as_str().unwrap_or("").to_string()),
            2.0 * (m * k * n) as f64 / secs / 1e9,
        );
    }
    Ok(result)
}

/// Columns of the table: (label, path, family).
const COLUMNS: [(&str, Path, &str); 10] = [
    ("amx-bf16", Path::Amx, "bf16"),
    ("amx-int8", Path::Amx, "int8"),
    ("avx512-f32", Path::Avx512, "f32"),
    ("avx512-bf16", Path::Avx512, "bf16"),
    ("avx512-vnni", Path::Avx512, "int8"),
    ("avx2-f32", Path::Avx2, "f32"),
    ("avx2-bf16", Path::Avx2, "bf16"),
    ("avx2-int8", Path::Avx2, "int8"),
    ("scalar-f32", Path::Scalar, "f32"),
    ("scalar-int8", Path::Scalar, "int8"),
];

fn main() -> Result<()> {
    let args = Args::parse();
    let team = match args.threads {
        Some(t) => std::sync::Arc::new(Team::new(t).context("start the threads")?),
        None => infer::team::current(),
    };
    team.install(|| bench(&args))
}

fn bench(args: &Args) -> Result<()> {
    let threads = infer::team::threads();
    if let Some(name) = &args.model {
        return model::run(args, name, threads);
    }
    let host = Features::host();
    let shapes = shapes(&args.shapes, args.quick)?;
    println!(
        "infer-bench: cpu features {host}; {threads} threads; median of {} runs; G(FL)OP/s = 2·M·K·N / time",
        args.runs
    );
    for p in Path::ALL.into_iter().filter(|p| !host.supports(*p)) {
        println!("skip: {p} path, this CPU lacks it");
    }

    let ceilings: Vec<(&str, f64)> = if host.supports(Path::Amx) {
        ["bf16", "int8"]
            .into_iter()
            .map(|f| Ok((f, ceiling(f, args.runs)?)))
            .collect::<Result<_>>()?
    } else {
        println!("skip: register-only AMX ceiling, this CPU has no AMX");
        Vec::new()
    };
    for (family, gops) in &ceilings {
        println!(
            "ceiling: register-only AMX {family} loop: {gops:.0} G(FL)OP/s on {threads} threads"
        );
    }

    let ort = if args.no_ort {
        Err("--no-ort".to_string())
    } else {
        onnx_runtime(&shapes, threads, args.runs)
    };
    match &ort {
        Ok(_) => println!(
            "onnxruntime: MatMul f32 and MatMulInteger u8×s8 on {threads} intra-op threads"
        ),
        Err(why) => println!("skip: onnxruntime comparison: {why}"),
    }

    let mut header = format!("{:<12} {:>5} {:>5} {:>5}", "shape", "M", "K", "N");
    for (label, _, _) in COLUMNS {
        header += &format!(" {label:>11}");
    }
    header += &format!(" {:>11} {:>11}", "ort-f32", "ort-int8");
    println!("{header}");
    let mut rows = Vec::new();
    for s in &shapes {
        let mut line = format!("{:<12} {:>5} {:>5} {:>5}", s.kind, s.m, s.k, s.n);
        let mut got: HashMap<&str, f64> = HashMap::new();
        for (label, path, family) in COLUMNS {
            let runnable =
                host.supports(path) && (path != Path::Scalar || s.macs() <= SCALAR_MACS_MAX);
            if runnable {
                let runs = if path == Path::Scalar {
                    args.runs.min(3)
                } else {
                    args.runs
                };
                let g = ours(path, family, *s, runs)?;
                got.insert(label, g);
                line += &format!(" {g:>11.1}");
            } else {
                line += &format!(" {:>11}", "-");
            }
        }
        for kind in ["f32", "int8"] {
            match ort
                .as_ref()
                .ok()
                .and_then(|o| o.get(&(s.m, s.k, s.n, kind.to_string())))
            {
                Some(g) => {
                    got.insert(if kind == "f32" { "ort-f32" } else { "ort-int8" }, *g);
                    line += &format!(" {g:>11.1}");
                }
                None => line += &format!(" {:>11}", "-"),
            }
        }
        println!("{line}");
        rows.push((*s, got));
    }

    println!("\nratios (same run; '-' = a side is missing on this CPU or skipped):");
    let ratio_defs: [(&str, &str, &str, f64); 8] = [
        ("AMX bf16 / AVX-512 f32", "amx-bf16", "avx512-f32", 8.0),
        ("AMX int8 / AVX-512 VNNI", "amx-int8", "avx512-vnni", 3.0),
        ("AMX int8 / ORT int8", "amx-int8", "ort-int8", 1.0),
        ("AVX-512 f32 / ORT f32", "avx512-f32", "ort-f32", 0.9),
        ("AVX-512 VNNI / ORT int8", "avx512-vnni", "ort-int8", 0.9),
        ("AVX2 f32 / ORT f32", "avx2-f32", "ort-f32", 0.0),
        ("AVX2 int8 / ORT int8", "avx2-int8", "ort-int8", 0.0),
        ("AVX2 int8 / AVX2 f32", "avx2-int8", "avx2-f32", 0.0),
    ];
    for (s, got) in &rows {
        let mut line = format!("{:>5}x{:<5}x{:<5}", s.m, s.k, s.n);
        for (name, num, den, target) in ratio_defs {
            let text = match (got.get(num), got.get(den)) {
                (Some(a), Some(b)) => format!("{:.2}", a / b),
                _ => "-".to_string(),
            };
            let goal = if target > 0.0 {
                format!(" (≥{target})")
            } else {
                String::new()
            };
            line += &format!("  {name}{goal}: {text}");
        }
        for (family, ceil) in &ceilings {
            let label = if *family == "bf16" {
                "amx-bf16"
            } else {
                "amx-int8"
            };
            if let Some(g) = got.get(label) {
                line += &format!("  AMX {family} / ceiling (≥0.5): {:.2}", g / ceil);
            }
        }
        println!("{line}");
    }
    Ok(())
}
