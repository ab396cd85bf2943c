//! Every kernel path against a plain reference, over random and awkward shapes.
//!
//! Paths this CPU lacks are skipped with a printed line; the AMX block kernels always run at
//! least on the software tile model, so their packing, blocking and tails are covered here too.
//! int8 must match exactly; bf16 and f32 must stay within `bf16_error_bound`.

use infer::gemm::bf16_error_bound;
use infer::{Engine, Features, PackedBf16, PackedF32, PackedI8, Parallelism, bf16};
use proptest::prelude::*;

/// Every engine this machine can run, plus the emulated AMX tiles for shapes small enough.
fn engines(small: bool) -> Vec<Engine> {
    let host = Features::host();
    let mut out: Vec<Engine> = host
        .available_paths()
        .into_iter()
        .map(|p| Engine::new(p).expect("available path"))
        .collect();
    for missing in infer::Path::ALL.into_iter().filter(|p| !host.supports(*p)) {
        eprintln!("skip: path {missing} not available on this CPU ({host})");
    }
    if small {
        out.push(Engine::emulated_amx());
    }
    out
}

/// Small deterministic generator so each case prints one seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32s(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| (self.next() % 20001) as f32 / 10000.0 - 1.0)
            .collect()
    }
    fn i8s(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| self.next() as u8 as i8).collect()
    }
}

fn check_int8(engine: Engine, m: usize, k: usize, n: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    let (a, w) = (rng.i8s(m * k), rng.i8s(k * n));
    let packed = PackedI8::from_k_by_n(k, n, &w);
    let mut c = vec![7i32; m * n];
    engine.i8(m, &a, &packed, &mut c);
    for i in 0..m {
        for j in 0..n {
            let want: i32 = (0..k)
                .map(|p| a[i * k + p] as i32 * w[p * n + j] as i32)
                .sum();
            assert_eq!(
                c[i * n + j],
                want,
                "{} int8 {m}x{k}x{n} seed {seed}: C[{i}][{j}]",
                engine.label()
            );
        }
    }
}

fn check_bf16(engine: Engine, m: usize, k: usize, n: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    let (a, w) = (rng.f32s(m * k), rng.f32s(k * n));
    let packed = PackedBf16::from_k_by_n(k, n, &w);
    let mut c = vec![f32::NAN; m * n];
    engine.bf16(m, &a, &packed, &mut c);
    for i in 0..m {
        for j in 0..n {
            let terms =
                (0..k).map(|p| bf16::round(a[i * k + p]) as f64 * bf16::round(w[p * n + j]) as f64);
            let (want, abs): (f64, f64) = terms.fold((0.0, 0.0), |(s, t), x| (s + x, t + x.abs()));
            let err = (c[i * n + j] as f64 - want).abs();
            let bound = bf16_error_bound(k, abs as f32) as f64;
            assert!(
                err <= bound,
                "{} bf16 {m}x{k}x{n} seed {seed}: C[{i}][{j}] = {} want {want} (err {err} > {bound})",
                engine.label(),
                c[i * n + j]
            );
        }
    }
}

fn check_f32(engine: Engine, m: usize, k: usize, n: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    let (a, w) = (rng.f32s(m * k), rng.f32s(k * n));
    let packed = PackedF32::from_k_by_n(k, n, &w);
    let mut c = vec![f32::NAN; m * n];
    engine.f32(m, &a, &packed, &mut c);
    for i in 0..m {
        for j in 0..n {
            let terms = (0..k).map(|p| a[i * k + p] as f64 * w[p * n + j] as f64);
            let (want, abs): (f64, f64) = terms.fold((0.0, 0.0), |(s, t), x| (s + x, t + x.abs()));
            let err = (c[i * n + j] as f64 - want).abs();
            assert!(
                err <= bf16_error_bound(k, abs as f32) as f64,
                "{} f32 {m}x{k}x{n} seed {seed}: C[{i}][{j}] err {err}",
                engine.label()
            );
        }
    }
}

fn all_families(m: usize, k: usize, n: usize, seed: u64) {
    let small = m * k * n <= 200_000;
    for engine in engines(small) {
        check_int8(engine, m, k, n, seed);
        check_bf16(engine, m, k, n, seed);
        if engine.label() != "amx-emulated" {
            check_f32(engine, m, k, n, seed);
        }
    }
}

#[test]
fn single_row_times_wide_matrix() {
    all_families(1, 96, 257, 11);
}

#[test]
fn depth_just_around_tile_rows() {
    for k in [1, 31, 32, 33, 63, 64, 65, 127] {
        all_families(17, k, 33, k as u64);
    }
}

#[test]
fn exact_multiples_of_the_block_use_the_callers_buffer() {
    all_families(64, 128, 64, 3);
}

#[test]
fn empty_depth_yields_zeros() {
    for engine in engines(true) {
        let packed = PackedI8::from_k_by_n(0, 5, &[]);
        let mut c = vec![9; 10];
        engine.i8(2, &[], &packed, &mut c);
        assert!(c.iter().all(|v| *v == 0), "{}", engine.label());
    }
}

#[test]
fn large_shape_runs_parallel_and_matches_single_threaded() {
    let (m, k, n) = (160, 700, 230);
    for engine in engines(false) {
        check_int8(engine, m, k, n, 99);
        check_bf16(engine, m, k, n, 99);
        let mut rng = Rng(5);
        let (a, w) = (rng.f32s(m * k), rng.f32s(k * n));
        let packed = PackedBf16::from_k_by_n(k, n, &w);
        let (mut par, mut single) = (vec![0f32; m * n], vec![0f32; m * n]);
        engine.bf16(m, &a, &packed, &mut par);
        engine
            .with_parallelism(Parallelism::Single)
            .bf16(m, &a, &packed, &mut single);
        assert_eq!(
            par,
            single,
            "{}: threads must not change the arithmetic",
            engine.label()
        );
    }
}

#[test]
fn a_short_m_is_split_by_columns_and_matches_single_threaded() {
    // One row panel, half of it padding: the parallel driver cuts the columns instead, and the
    // kernels skip the padded rows.
    let (m, k, n) = (13, 384, 1536);
    for engine in engines(false) {
        check_int8(engine, m, k, n, 7);
        check_bf16(engine, m, k, n, 7);
        let mut rng = Rng(9);
        let (a, w) = (rng.f32s(m * k), rng.f32s(k * n));
        let packed = PackedF32::from_k_by_n(k, n, &w);
        let (mut par, mut single) = (vec![0f32; m * n], vec![0f32; m * n]);
        engine.f32(m, &a, &packed, &mut par);
        engine
            .with_parallelism(Parallelism::Single)
            .f32(m, &a, &packed, &mut single);
        assert_eq!(par, single, "{}", engine.label());
        let want: Vec<f32> = (0..m * n)
            .map(|i| {
                (0..k)
                    .map(|kk| a[(i / n) * k + kk] * w[kk * n + i % n])
                    .sum()
            })
            .collect();
        for (got, want) in par.iter().zip(&want) {
            assert!(
                (got - want).abs() < 1e-3,
                "{}: {got} vs {want}",
                engine.label()
            );
        }
    }
}

#[test]
fn int8_extremes_do_not_overflow_or_saturate() {
    // -128 · -128 summed over K is where i16 shortcuts (vpmaddubsw) saturate.
    let (m, k, n) = (3, 1000, 5);
    let a = vec![-128i8; m * k];
    let w = vec![-128i8; k * n];
    let packed = PackedI8::from_k_by_n(k, n, &w);
    for engine in engines(true) {
        let mut c = vec![0; m * n];
        engine.i8(m, &a, &packed, &mut c);
        assert!(
            c.iter().all(|v| *v == 128 * 128 * k as i32),
            "{}",
            engine.label()
        );
    }
}

#[test]
fn weights_given_out_by_in_match_weights_given_in_by_out() {
    let (k, n) = (45, 19);
    let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 - 3.0).collect();
    let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
    let a: Vec<f32> = (0..2 * k).map(|i| (i % 5) as f32).collect();
    let engine = Engine::new(infer::Path::Scalar).unwrap();
    let (mut c1, mut c2) = (vec![0f32; 2 * n], vec![0f32; 2 * n]);
    engine.bf16(2, &a, &PackedBf16::from_k_by_n(k, n, &w), &mut c1);
    engine.bf16(2, &a, &PackedBf16::from_n_by_k(n, k, &wt), &mut c2);
    assert_eq!(c1, c2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_shapes_agree_with_the_reference(m in 1usize..70, k in 1usize..160, n in 1usize..70, seed in any::<u64>()) {
        all_families(m, k, n, seed);
    }
}
