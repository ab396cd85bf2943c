//! The GEMM entry point: `C = A · B` with A as row-major activations and B as packed weights,
//! on the kernel path the [`Engine`] was built for.
//!
//! Element families: f32 (f32 accumulate); bf16 (A rounded to bf16 on packing, f32 accumulate);
//! int8 (signed × signed, i32 accumulate, exact). Results agree across paths: bit-exact for
//! int8; for bf16 and f32 they differ only in the order of f32 additions, within
//! [`bf16_error_bound`].

mod driver;

use crate::aligned::{AlignedVec, Zeroable};
use crate::amx::emu::EmuTiles;
use crate::amx::hw::HwTiles;
use crate::amx::{TileConfig, micro, request_permission};
use crate::kernels;
#[cfg(target_arch = "x86_64")]
use crate::kernels::avx512_rows::Store;
use crate::pack::{
    BLOCK_COLS, BLOCK_ROWS, Geometry, INT8_DEPTH_MAX, PackedBf16, PackedF32, PackedI8, blocks,
    pack_a,
};
use crate::{Error, Path, bf16};

/// Below this many multiply-adds a GEMM runs on the calling thread: fanning out would cost
/// more than it saves. (A batch of one short sentence makes GEMMs of a few million, which
/// stream megabytes of weights: two threads stream them faster than one.)
pub const PARALLEL_MACS_MIN: usize = 1 << 20;

/// Rows of C one task of the VNNI correction takes.
const CORRECT_ROWS: usize = 16;
/// What the VNNI path adds to A's bytes (see [`Engine::i8_offset`]).
pub(crate) const OFFSET: i32 = 128;

/// Whether a GEMM may use the engine's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// Parallel when the shape has at least [`PARALLEL_MACS_MIN`] multiply-adds.
    Auto,
    /// Always on the calling thread.
    Single,
}

/// Where the AMX block kernels execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tiles {
    Hardware,
    /// The software tile model: same kernel code, for tests on machines without AMX.
    Emulated,
}

/// A configured GEMM engine: a kernel path and a threading policy. Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct Engine {
    path: Path,
    tiles: Tiles,
    parallelism: Parallelism,
}

impl Engine {
    /// The engine for `path`; refuses a path this CPU cannot run. AMX also needs the kernel's
    /// permission, requested here (once per process).
    pub fn new(path: Path) -> Result<Engine, Error> {
        let path = Path::select(Some(path))?;
        if path == Path::Amx {
            request_permission()?;
        }
        Ok(Engine {
            path,
            tiles: Tiles::Hardware,
            parallelism: Parallelism::Auto,
        })
    }

    /// The path forced by `FABRIC_INFER_KERNEL`, or the fastest one here.
    pub fn detect() -> Result<Engine, Error> {
        let path = Path::select(Path::from_env()?)?;
        Engine::new(path)
    }

    /// The AMX path with every tile instruction run by the software model in
    /// [`crate::amx::emu`]. Slow; it exists so tests cover the tile kernels on any machine.
    pub fn emulated_amx() -> Engine {
        Engine {
            path: Path::Amx,
            tiles: Tiles::Emulated,
            parallelism: Parallelism::Auto,
        }
    }

    pub fn with_parallelism(self, parallelism: Parallelism) -> Engine {
        Engine {
            parallelism,
            ..self
        }
    }

    pub fn path(&self) -> Path {
        self.path
    }

    /// A short label: the path, and whether tiles are emulated.
    pub fn label(&self) -> String {
        match self.tiles {
            Tiles::Emulated => format!("{}-emulated", self.path),
            Tiles::Hardware => self.path.to_string(),
        }
    }

    fn parallel(&self, m: usize, k: usize, n: usize) -> bool {
        self.parallelism == Parallelism::Auto
            && m.saturating_mul(k).saturating_mul(n) >= PARALLEL_MACS_MIN
    }

    /// `c = a · b` in f32. `a` is `m × b.k()` row-major, `c` is `m × b.n()` row-major.
    pub fn f32(&self, m: usize, a: &[f32], b: &PackedF32, c: &mut [f32]) {
        let (k, n) = (b.k(), b.n());
        check_shapes(m, k, n, a.len(), c.len());
        let parallel = self.parallel(m, k, n);
        #[cfg(target_arch = "x86_64")]
        if self.path.for_f32() == Path::Avx512 {
            // A read where it lies: f32 needs no packing (see `kernels::avx512_rows`).
            with_exact_c(m, n, c, |c, ldc| {
                driver::run_f32_rows(m, k, a, b.data(), blocks(n), c, ldc, parallel);
            });
            return;
        }
        let pa = pack_a(Geometry::F32, m, k, a, parallel, |x| x);
        let kernel = kernels::f32_block(self.path.for_f32());
        with_padded_c(m, n, c, |job_c, ldc| {
            // SAFETY: the driver hands every call one 32 × 32 block of C, whole panels, and the
            // block's rows that hold A's rows.
            driver::run(
                job(Geometry::F32, m, k, n, &pa, b.data(), job_c, ldc),
                parallel,
                || (),
                |_, a, b, s, c, ldc, rows, _| unsafe { kernel(a, b, s, c, ldc, rows) },
            );
        });
    }

    /// `c = bf16(a) · b` with f32 accumulation. `a` is `m × b.k()` f32, rounded to bf16 on
    /// packing; `c` is `m × b.n()`.
    pub fn bf16(&self, m: usize, a: &[f32], b: &PackedBf16, c: &mut [f32]) {
        let (k, n) = (b.k(), b.n());
        check_shapes(m, k, n, a.len(), c.len());
        let parallel = self.parallel(m, k, n);
        let pa = pack_a(Geometry::Bf16, m, k, a, parallel, bf16::from_f32);
        #[cfg(target_arch = "x86_64")]
        if self.path == Path::Avx512 {
            // SAFETY: the engine's path says the CPU has AVX-512 BF16.
            unsafe {
                run_exact(
                    (Geometry::Bf16, m, k, n, parallel),
                    &pa,
                    b.data(),
                    c,
                    kernels::avx512::bf16_block,
                )
            };
            return;
        }
        with_padded_c(m, n, c, |job_c, ldc| {
            let job = job(Geometry::Bf16, m, k, n, &pa, b.data(), job_c, ldc);
            match (self.path, self.tiles) {
                (Path::Amx, Tiles::Hardware) => {
                    driver::run(job, parallel, hw_tiles, |t, a, b, s, c, ldc, _, _| {
                        // SAFETY: tiles configured with TileConfig::blocks on this thread; one block.
                        unsafe { micro::bf16_block(t, a, b, s, c, ldc) }
                    })
                }
                (Path::Amx, Tiles::Emulated) => {
                    driver::run(job, parallel, emu_tiles, |t, a, b, s, c, ldc, _, _| {
                        // SAFETY: as above, on the software tiles.
                        unsafe { micro::bf16_block(t, a, b, s, c, ldc) }
                    })
                }
                (path, _) => {
                    let kernel = kernels::bf16_block(path);
                    // SAFETY: one 32 × 32 block of C and whole panels per call.
                    driver::run(
                        job,
                        parallel,
                        || (),
                        |_, a, b, s, c, ldc, rows, _| unsafe { kernel(a, b, s, c, ldc, rows) },
                    )
                }
            }
        });
    }

    /// `c = a · b` in int8 with exact i32 accumulation. `a` is `m × b.k()`, `c` is `m × b.n()`.
    pub fn i8(&self, m: usize, a: &[i8], b: &PackedI8, c: &mut [i32]) {
        if self.i8_offset(m, a, b, c) {
            let correct = |row: &mut [i32]| {
                for (v, sum) in row.iter_mut().zip(b.col_sums()) {
                    *v -= OFFSET * sum;
                }
            };
            let n = b.n().max(1);
            if self.parallel(m, b.k(), b.n()) {
                crate::team::chunks_mut(c, n * CORRECT_ROWS, |_, rows| {
                    rows.chunks_mut(n).for_each(correct)
                });
            } else {
                c.chunks_mut(n).for_each(correct);
            }
        }
    }

    /// [`Engine::i8`] without the last pass of the VNNI path: when this returns true, column
    /// j of `c` holds `a · b + OFFSET · Σ_k b[k][j]` (`PackedI8::col_sums`), for the caller to
    /// take off where it reads `c` anyway (the int8 layer's dequantization), which spares a
    /// pass over all of C; false means `c` is exact.
    pub(crate) fn i8_offset(&self, m: usize, a: &[i8], b: &PackedI8, c: &mut [i32]) -> bool {
        let (k, n) = (b.k(), b.n());
        check_shapes(m, k, n, a.len(), c.len());
        assert!(k <= INT8_DEPTH_MAX, "int8 depth {k} exceeds INT8_DEPTH_MAX");
        let parallel = self.parallel(m, k, n);
        #[cfg(target_arch = "x86_64")]
        if self.path == Path::Avx512 {
            // The VNNI kernel reads A's bytes as unsigned: packed offset by 128 (`a ^ 0x80`).
            let pa = pack_a(Geometry::I8, m, k, a, parallel, |x: i8| x ^ i8::MIN);
            // SAFETY: the engine's path says the CPU has AVX-512 VNNI.
            unsafe {
                run_exact(
                    (Geometry::I8, m, k, n, parallel),
                    &pa,
                    b.data(),
                    c,
                    kernels::avx512::i8_block,
                )
            };
            return k > 0;
        }
        let pa = pack_a(Geometry::I8, m, k, a, parallel, |x| x);
        with_padded_c(m, n, c, |job_c, ldc| {
            let job = job(Geometry::I8, m, k, n, &pa, b.data(), job_c, ldc);
            match (self.path, self.tiles) {
                (Path::Amx, Tiles::Hardware) => {
                    driver::run(job, parallel, hw_tiles, |t, a, b, s, c, ldc, _, _| {
                        // SAFETY: tiles configured with TileConfig::blocks on this thread; one block.
                        unsafe { micro::i8_block(t, a, b, s, c, ldc) }
                    })
                }
                (Path::Amx, Tiles::Emulated) => {
                    driver::run(job, parallel, emu_tiles, |t, a, b, s, c, ldc, _, _| {
                        // SAFETY: as above, on the software tiles.
                        unsafe { micro::i8_block(t, a, b, s, c, ldc) }
                    })
                }
                (path, _) => {
                    let kernel = kernels::i8_block(path);
                    // SAFETY: one 32 × 32 block of C and whole panels per call.
                    driver::run(
                        job,
                        parallel,
                        || (),
                        |_, a, b, s, c, ldc, rows, _| unsafe { kernel(a, b, s, c, ldc, rows) },
                    );
                }
            }
        });
        false
    }
}

fn hw_tiles() -> HwTiles {
    HwTiles::configure(&TileConfig::blocks())
        .expect("AMX permission was granted when the engine was built")
}

fn emu_tiles() -> EmuTiles {
    EmuTiles::configure(&TileConfig::blocks())
}

fn check_shapes(m: usize, k: usize, n: usize, a_len: usize, c_len: usize) {
    assert_eq!(a_len, m * k, "A must be m × k = {m} × {k}");
    assert_eq!(c_len, m * n, "C must be m × n = {m} × {n}");
}

#[allow(clippy::too_many_arguments)]
fn job<'a, A, B, C>(
    geo: Geometry,
    m: usize,
    k: usize,
    n: usize,
    a: &'a [A],
    b: &'a [B],
    c: &'a mut [C],
    ldc: usize,
) -> driver::Job<'a, A, B, C> {
    driver::Job {
        a,
        b,
        steps: geo.steps(k),
        step_len: geo.step_len(),
        rows: m,
        exact_rows: false,
        row_panels: blocks(m),
        col_panels: blocks(n),
        c,
        ldc,
    }
}

/// One of the AVX-512 kernels that compute exactly the rows asked for and overwrite C on a
/// block's first K chunk: `(a_panel, b_panel, steps, c_block, ldc, rows, store)`.
#[cfg(target_arch = "x86_64")]
type ExactBlock<A, B, C> = unsafe fn(*const A, *const B, usize, *mut C, usize, usize, Store);

/// `c = a · b` for `(geometry, m, k, n, parallel)` with an [`ExactBlock`] kernel over packed
/// `a` and `b`.
///
/// # Safety
/// The CPU has the features `kernel` was compiled for.
#[cfg(target_arch = "x86_64")]
unsafe fn run_exact<A: Sync, B: Sync, C: Zeroable + Default + Copy + Send>(
    (geo, m, k, n, parallel): (Geometry, usize, usize, usize, bool),
    a: &[A],
    b: &[B],
    c: &mut [C],
    kernel: ExactBlock<A, B, C>,
) {
    if k == 0 {
        // No K chunk, so no kernel call writes C.
        c.fill(C::default());
        return;
    }
    with_exact_c(m, n, c, |job_c, ldc| {
        let job = driver::Job {
            exact_rows: true,
            ..job(geo, m, k, n, a, b, job_c, ldc)
        };
        driver::run(
            job,
            parallel,
            || (),
            |_, a, b, s, c, ldc, rows, first| {
                // SAFETY: one block of C (its `rows` rows) and whole panels per call; the caller
                // vouched for the CPU.
                unsafe { kernel(a, b, s, c, ldc, rows, Store::first(first)) }
            },
        );
    });
}

/// Runs `f` on a C of `m` rows whose columns are whole blocks, for kernels that write every
/// element of their rows (no zeroing, no row padding): the caller's buffer when `n` is a
/// multiple of 32, else a wider scratch copied back after.
fn with_exact_c<C: Zeroable + Default + Copy>(
    m: usize,
    n: usize,
    c: &mut [C],
    f: impl FnOnce(&mut [C], usize),
) {
    if n.is_multiple_of(BLOCK_COLS) {
        f(c, n);
        return;
    }
    let ldc = blocks(n) * BLOCK_COLS;
    let mut wide = AlignedVec::<C>::zeroed(m * ldc);
    f(&mut wide, ldc);
    copy_back(c, n, &wide, ldc);
}

/// Copies the first `n` values of each `ldc`-long row of `wide` into the rows of `c`.
fn copy_back<C: Copy>(c: &mut [C], n: usize, wide: &[C], ldc: usize) {
    for (dst, src) in c.chunks_mut(n.max(1)).zip(wide.chunks(ldc.max(1))) {
        dst.copy_from_slice(&src[..n]);
    }
}

/// Runs `f` on a zeroed C whose rows and columns are whole blocks: the caller's own buffer
/// when `m` and `n` already are multiples of 32, else a padded scratch copied back after.
fn with_padded_c<C: Zeroable + Default>(
    m: usize,
    n: usize,
    c: &mut [C],
    f: impl FnOnce(&mut [C], usize),
) {
    if m.is_multiple_of(BLOCK_ROWS) && n.is_multiple_of(BLOCK_COLS) {
        c.fill(C::default());
        f(c, n);
        return;
    }
    let ldc = blocks(n) * BLOCK_COLS;
    let mut padded = AlignedVec::<C>::zeroed(blocks(m) * BLOCK_ROWS * ldc);
    f(&mut padded, ldc);
    copy_back(c, n, &padded, ldc);
}

/// Largest difference between the bf16 GEMM and an exact product of the *bf16-rounded*
/// inputs: each f32 addition of a K-long sum may round, so the error is at most
/// `K · 2⁻²⁴ · Σ_k |a_k b_k|` (a standard bound for recursive summation, doubled here for the
/// FMA-versus-separate-multiply difference between paths) plus a tiny absolute floor.
pub fn bf16_error_bound(k: usize, abs_dot: f32) -> f32 {
    let unit_roundoff = f32::EPSILON / 2.0;
    2.0 * k as f32 * unit_roundoff * abs_dot + 1e-30
}
