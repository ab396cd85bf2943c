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

/// The f32 block kernel for a (non-AMX) path.
pub(crate) fn f32_block(path: Path) -> Block<f32, f32, f32> {
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => avx512::f32_block,
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => avx2::f32_block,
        Path::Scalar => scalar::f32_block,
        other => unreachable!("no f32 block kernel for {other}"),
    }
}

/// The bf16 block kernel for a non-AMX path.
pub(crate) fn bf16_block(path: Path) -> Block<u16, u16, f32> {
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => avx512::bf16_block,
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => avx2::bf16_block,
        Path::Scalar => scalar::bf16_block,
        other => unreachable!("no vector bf16 block kernel for {other}"),
    }
}

/// The int8 block kernel for a non-AMX path, and whether it reads A's bytes as unsigned (the
/// VNNI form): then A must be packed offset by 128 (`a ^ 0x80`) and the caller subtract
/// `128 · Σ_k b[k][j]`.
pub(crate) fn i8_block(path: Path) -> (Block<i8, i8, i32>, bool) {
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => (avx512::i8_block, true),
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => (avx2::i8_block, false),
        Path::Scalar => (scalar::i8_block, false),
        other => unreachable!("no vector int8 block kernel for {other}"),
    }
}
