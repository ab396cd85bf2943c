//! Block kernels for the vector paths: each computes one `BLOCK_ROWS × BLOCK_COLS` block of C
//! from one packed A panel and one packed B panel (see [`crate::pack`]).
//!
//! Contract shared by every kernel: `c[r * ldc + j] += Σ_k a[r][k] · b[k][j]` for j < 32 and at
//! least every r < `rows` (≤ 32) over `steps` packed steps; rows from `rows` on are A's zero
//! padding, which a kernel may skip (in whole register groups) or compute. `a` and `b` point at
//! `steps * step_len` readable elements; `c` at 32 rows of `ldc >= 32` writable elements. The
//! AMX kernels keep the same contract (computing all 32 rows) but live in [`crate::amx`],
//! because they need per-thread tile state.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_rows;
pub(crate) mod scalar;

use crate::Path;

/// One block kernel: `(a_panel, b_panel, steps, c_block, ldc, rows)`.
pub(crate) type Block<A, B, C> = unsafe fn(*const A, *const B, usize, *mut C, usize, usize);

/// The f32 block kernel for a path that packs A (AVX-512, and AMX for f32, read A in place
/// with `avx512_rows` instead).
pub(crate) fn f32_block(path: Path) -> Block<f32, f32, f32> {
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => avx2::f32_block,
        Path::Scalar => scalar::f32_block,
        other => unreachable!("no f32 block kernel for {other}"),
    }
}

/// The bf16 block kernel for a path without its own (AMX and AVX-512 are called directly).
pub(crate) fn bf16_block(path: Path) -> Block<u16, u16, f32> {
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => avx2::bf16_block,
        Path::Scalar => scalar::bf16_block,
        other => unreachable!("no generic bf16 block kernel for {other}"),
    }
}

/// The int8 block kernel for a path without its own (AMX and AVX-512 VNNI, whose kernel reads
/// A unsigned, are called directly).
pub(crate) fn i8_block(path: Path) -> Block<i8, i8, i32> {
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => avx2::i8_block,
        Path::Scalar => scalar::i8_block,
        other => unreachable!("no generic int8 block kernel for {other}"),
    }
}
