//! The AVX-512 f32 kernel that reads A where it lies (row-major, `lda` apart) instead of from
//! a packed panel: f32 A needs no conversion, so packing it only cost a pass over A. It
//! computes `rows` (≤ 32) rows × 32 columns of C over `steps` values of K, 12 rows at a time:
//! 24 accumulators, the two B vectors of a step and the broadcast A value fill 27 of the 32
//! registers, and each step's B pair is loaded once for 24 FMAs.

use std::arch::x86_64::*;

use crate::pack::{BLOCK_COLS, BLOCK_ROWS, TILE_ROWS};

/// Rows of C held in registers at once by every AVX-512 kernel: 24 accumulators, the two B
/// vectors of a step and the broadcast A value fill 27 of the 32 registers.
const GROUP_ROWS: usize = 12;

/// Steps of B (128 bytes each) read ahead of the kernel: 4 KiB, a page ahead. A short batch's
/// GEMM streams its weights from memory once, and the hardware's prefetcher stops at each
/// 4 KiB page; reading a page ahead took batch-1 f32 from 2.6 to 2.1 ms (16 tokens, MiniLM,
/// 2 threads; 8, 16, 48 and 64 steps measured slower).
pub(crate) const PREFETCH_STEPS: usize = 32;

/// How a kernel call treats C: the first K chunk overwrites it (no zeroing pass), later ones
/// add to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    Overwrite,
    Accumulate,
}

impl Store {
    /// Overwrite for a block's first K chunk, accumulate for the rest.
    pub(crate) fn first(first: bool) -> Store {
        if first {
            Store::Overwrite
        } else {
            Store::Accumulate
        }
    }
}

/// `c[r][j] (+)= Σ_s a[r·lda + s] · b[s][j]` for r < `rows`, j < 32.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `rows` rows of `steps` readable values `lda` apart; `b`
/// is `steps × 32` readable values (a packed f32 B panel from its step); `c` holds `rows` rows
/// of 32 writable values `ldc` apart.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)] // a kernel's raw operands, as the block kernels take them
pub(crate) unsafe fn f32_rows(
    a: *const f32,
    lda: usize,
    b: *const f32,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    store: Store,
) {
    for (r0, size) in row_groups(rows) {
        // SAFETY: rows r0..r0+size lie inside what the caller vouched for.
        unsafe {
            let (a, c) = (a.add(r0 * lda), c.add(r0 * ldc));
            match size {
                12 => group::<12>(a, lda, b, steps, c, ldc, store),
                8 => group::<8>(a, lda, b, steps, c, ldc, store),
                4 => group::<4>(a, lda, b, steps, c, ldc, store),
                _ => group::<1>(a, lda, b, steps, c, ldc, store),
            }
        }
    }
}

/// The register groups `(first row, rows)` that cover a block's first `rows` (≤ 32) rows
/// exactly: twelve at a time, then eight, four and one. Every AVX-512 kernel holds its rows
/// in these groups.
pub(crate) fn row_groups(rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let rows = rows.min(BLOCK_ROWS);
    let mut r0 = 0;
    std::iter::from_fn(move || {
        let size = match rows - r0 {
            0 => return None,
            GROUP_ROWS.. => GROUP_ROWS,
            8..GROUP_ROWS => 8,
            4..8 => 4,
            _ => 1,
        };
        let group = (r0, size);
        r0 += size;
        Some(group)
    })
}

/// `R` rows of [`f32_rows`].
///
/// # Safety
/// As [`f32_rows`], for `R` rows.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn group<const R: usize>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    store: Store,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for s in 0..steps {
        // SAFETY: step s of the panel holds 32 values; row r of A has `steps` values.
        unsafe {
            let bp = b.add(s * BLOCK_COLS);
            // A hint only: an address past the panel's end is never read.
            let ahead = bp.wrapping_add(PREFETCH_STEPS * BLOCK_COLS).cast::<i8>();
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(TILE_ROWS)));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * lda + s));
                acc_r[0] = _mm512_fmadd_ps(av, b0, acc_r[0]);
                acc_r[1] = _mm512_fmadd_ps(av, b1, acc_r[1]);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        // SAFETY: row r of C has 32 writable values.
        unsafe { store_row(c.add(r * ldc), acc_r, store) }
    }
}

/// Writes (or adds) one row's two accumulators to the 32 f32 at `cp`.
///
/// # Safety
/// The CPU has AVX-512F; `cp` points at 32 writable f32.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn store_row(cp: *mut f32, acc: &[__m512; 2], store: Store) {
    // SAFETY: both halves lie inside the 32 values the caller vouched for.
    unsafe {
        let hi = cp.add(TILE_ROWS);
        match store {
            Store::Overwrite => {
                _mm512_storeu_ps(cp, acc[0]);
                _mm512_storeu_ps(hi, acc[1]);
            }
            Store::Accumulate => {
                _mm512_storeu_ps(cp, _mm512_add_ps(_mm512_loadu_ps(cp), acc[0]));
                _mm512_storeu_ps(hi, _mm512_add_ps(_mm512_loadu_ps(hi), acc[1]));
            }
        }
    }
}
