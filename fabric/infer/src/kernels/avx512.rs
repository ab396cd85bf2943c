//! AVX-512 block kernels (f32's is `avx512_rows`): bf16 with `vdpbf16ps` (pairs of K per
//! 32-bit lane, f32 accumulate), int8 with VNNI `vpdpbusd`. Both compute exactly the rows they
//! are asked for and overwrite C on a block's first K chunk. Each B tile row of the packed layout is exactly one
//! zmm. `vpdpbusd` multiplies *unsigned* A bytes by signed B bytes, so the engine packs A offset
//! by 128 for it and subtracts `128 · Σ_k b[k][j]` afterwards (exact in i32).

use std::arch::x86_64::*;

use super::avx512_rows::{Store, row_groups, store_row};
use crate::pack::{Geometry, TILE_ROWS};

/// Asks for the B lines a page (4 KiB) past `p0` and `p1`, the two tile rows a step reads
/// next (see `avx512_rows::PREFETCH_STEPS`). A hint only: nothing past B's end is read.
#[target_feature(enable = "avx512f")]
#[inline]
fn prefetch_ahead(p0: *const i8, p1: *const i8) {
    const AHEAD_BYTES: usize = 4096;
    _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(AHEAD_BYTES));
    _mm_prefetch::<_MM_HINT_T0>(p1.wrapping_add(AHEAD_BYTES));
}

/// # Safety
/// The block-kernel contract in [`crate::kernels`], and the CPU must have AVX-512F and
/// AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)] // a kernel's raw operands, as the block kernels take them
pub(crate) unsafe fn bf16_block(
    a: *const u16,
    b: *const u16,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    store: Store,
) {
    for (r0, size) in row_groups(rows) {
        // SAFETY: rows r0..r0+size of the block, which the caller vouched for.
        unsafe {
            match size {
                12 => bf16_group::<12>(a, b, steps, c, ldc, r0, store),
                8 => bf16_group::<8>(a, b, steps, c, ldc, r0, store),
                4 => bf16_group::<4>(a, b, steps, c, ldc, r0, store),
                _ => bf16_group::<1>(a, b, steps, c, ldc, r0, store),
            }
        }
    }
}

/// Rows `r0..r0 + R` of [`bf16_block`].
///
/// # Safety
/// As [`bf16_block`], with `r0 + R <= 32`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn bf16_group<const R: usize>(
    a: *const u16,
    b: *const u16,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    r0: usize,
    store: Store,
) {
    let geo = Geometry::Bf16;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for s in 0..steps {
        for p in 0..geo.k_step() / 2 {
            // SAFETY: tile row p of both B tiles (64 bytes each) and one A pair per row lie
            // inside step s. __m512i and __m512bh are both 64 plain bytes.
            unsafe {
                let (p0, p1) = (
                    b.add(s * geo.step_len() + geo.b_index(0, 2 * p)),
                    b.add(s * geo.step_len() + geo.b_index(TILE_ROWS, 2 * p)),
                );
                prefetch_ahead(p0.cast(), p1.cast());
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(p0.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(p1.cast()));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let ap = a.add(s * geo.step_len() + geo.a_index(r0 + r, 2 * p));
                    let pair: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(ap.cast::<i32>().read_unaligned()));
                    acc_r[0] = _mm512_dpbf16_ps(acc_r[0], pair, b0);
                    acc_r[1] = _mm512_dpbf16_ps(acc_r[1], pair, b1);
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        // SAFETY: row r0+r of the C block has 32 writable f32.
        unsafe { store_row(c.add((r0 + r) * ldc), acc_r, store) }
    }
}

/// Computes `Σ a · b` per element of the block with A's bytes read as *unsigned*: the
/// engine packs A offset by 128 (`a ^ 0x80`) for this kernel and subtracts `128 · Σ_k b[k][j]`
/// afterwards (see the module docs).
///
/// # Safety
/// The block-kernel contract in [`crate::kernels`], and the CPU must have AVX-512F and
/// AVX512-VNNI.
#[target_feature(enable = "avx512f,avx512vnni")]
#[allow(clippy::too_many_arguments)] // a kernel's raw operands, as the block kernels take them
pub(crate) unsafe fn i8_block(
    a: *const i8,
    b: *const i8,
    steps: usize,
    c: *mut i32,
    ldc: usize,
    rows: usize,
    store: Store,
) {
    for (r0, size) in row_groups(rows) {
        // SAFETY: rows r0..r0+size of the block, which the caller vouched for.
        unsafe {
            match size {
                12 => i8_group::<12>(a, b, steps, c, ldc, r0, store),
                8 => i8_group::<8>(a, b, steps, c, ldc, r0, store),
                4 => i8_group::<4>(a, b, steps, c, ldc, r0, store),
                _ => i8_group::<1>(a, b, steps, c, ldc, r0, store),
            }
        }
    }
}

/// Rows `r0..r0 + R` of [`i8_block`].
///
/// # Safety
/// As [`i8_block`], with `r0 + R <= 32`.
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn i8_group<const R: usize>(
    a: *const i8,
    b: *const i8,
    steps: usize,
    c: *mut i32,
    ldc: usize,
    r0: usize,
    store: Store,
) {
    let geo = Geometry::I8;
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    for s in 0..steps {
        for q in 0..geo.k_step() / 4 {
            // SAFETY: tile row q of both B tiles and one A quad per row lie inside step s.
            unsafe {
                let (p0, p1) = (
                    b.add(s * geo.step_len() + geo.b_index(0, 4 * q)),
                    b.add(s * geo.step_len() + geo.b_index(TILE_ROWS, 4 * q)),
                );
                prefetch_ahead(p0.cast(), p1.cast());
                let b0 = _mm512_loadu_si512(p0.cast());
                let b1 = _mm512_loadu_si512(p1.cast());
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let ap = a.add(s * geo.step_len() + geo.a_index(r0 + r, 4 * q));
                    let quad = _mm512_set1_epi32(ap.cast::<i32>().read_unaligned());
                    acc_r[0] = _mm512_dpbusd_epi32(acc_r[0], quad, b0);
                    acc_r[1] = _mm512_dpbusd_epi32(acc_r[1], quad, b1);
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        // SAFETY: row r0+r of the C block has 32 writable i32.
        unsafe {
            let cp = c.add((r0 + r) * ldc);
            let hi = cp.add(TILE_ROWS);
            match store {
                Store::Overwrite => {
                    _mm512_storeu_si512(cp.cast(), acc_r[0]);
                    _mm512_storeu_si512(hi.cast(), acc_r[1]);
                }
                Store::Accumulate => {
                    _mm512_storeu_si512(
                        cp.cast(),
                        _mm512_add_epi32(_mm512_loadu_si512(cp.cast()), acc_r[0]),
                    );
                    _mm512_storeu_si512(
                        hi.cast(),
                        _mm512_add_epi32(_mm512_loadu_si512(hi.cast()), acc_r[1]),
                    );
                }
            }
        }
    }
}
