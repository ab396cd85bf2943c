//! Criterion benches of the inference GEMMs: one transformer-like shape and one square shape,
//! on every kernel path this CPU has (scalar only on the small shape). For the full table with
//! ONNX Runtime and the AMX ceiling, run the `infer-bench` command in `tools`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use infer::{Engine, Features, PackedBf16, PackedF32, PackedI8, Path};

fn gemms(c: &mut Criterion) {
    let host = Features::host();
    for (m, k, n) in [(128usize, 384usize, 384usize), (512, 1024, 1024)] {
        let mut group = c.benchmark_group(format!("gemm_{m}x{k}x{n}"));
        group
            .sample_size(10)
            .throughput(Throughput::Elements((2 * m * k * n) as u64));
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 / 13.0).collect();
        let a8: Vec<i8> = (0..m * k).map(|i| (i % 251) as u8 as i8).collect();
        let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 / 7.0).collect();
        let w8: Vec<i8> = (0..k * n).map(|i| (i % 241) as u8 as i8).collect();
        let (pf, pb, pi) = (
            PackedF32::from_k_by_n(k, n, &w),
            PackedBf16::from_k_by_n(k, n, &w),
            PackedI8::from_k_by_n(k, n, &w8),
        );
        let (mut cf, mut ci) = (vec![0f32; m * n], vec![0i32; m * n]);
        for path in host.available_paths() {
            if path == Path::Scalar && m * k * n > 1 << 25 {
                continue;
            }
            let engine = Engine::new(path).expect("available path");
            if path != Path::Amx {
                group.bench_function(BenchmarkId::new("f32", path), |b| {
                    b.iter(|| engine.f32(m, &a, &pf, &mut cf))
                });
            }
            group.bench_function(BenchmarkId::new("bf16", path), |b| {
                b.iter(|| engine.bf16(m, &a, &pb, &mut cf))
            });
            group.bench_function(BenchmarkId::new("int8", path), |b| {
                b.iter(|| engine.i8(m, &a8, &pi, &mut ci))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, gemms);
criterion_main!(benches);
