//! Portable block kernels: plain loops over the packed layout. They are the reference the
//! vector and tile kernels are tested against, and the path for CPUs without AVX2.

use crate::bf16;
use crate::pack::{BLOCK_COLS, BLOCK_ROWS, Geometry};

/// # Safety
/// See the block-kernel contract in [`crate::kernels`].
pub(crate) unsafe fn f32_block(
    a: *const f32,
    b: *const f32,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    _rows: usize,
) {
    // SAFETY: the caller guarantees `steps * step_len` readable elements behind a and b.
    let (a, b) = unsafe { panels(a, b, steps, Geometry::F32) };
    let mut acc = [[0f32; BLOCK_COLS]; BLOCK_ROWS];
    for s in 0..steps {
        let (sa, sb) = (
            &a[s * BLOCK_ROWS..][..BLOCK_ROWS],
            &b[s * BLOCK_COLS..][..BLOCK_COLS],
        );
        for (r, row) in acc.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v += sa[r] * sb[j];
            }
        }
    }
    // SAFETY: the caller guarantees 32 rows of ldc writable elements behind c.
    unsafe { add_into(&acc, c, ldc) }
}

/// # Safety
/// See the block-kernel contract in [`crate::kernels`].
pub(crate) unsafe fn bf16_block(
    a: *const u16,
    b: *const u16,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    _rows: usize,
) {
    let geo = Geometry::Bf16;
    // SAFETY: as in f32_block.
    let (a, b) = unsafe { panels(a, b, steps, geo) };
    let mut acc = [[0f32; BLOCK_COLS]; BLOCK_ROWS];
    for s in 0..steps {
        let (sa, sb) = (
            &a[s * geo.step_len()..][..geo.step_len()],
            &b[s * geo.step_len()..][..geo.step_len()],
        );
        for (r, row) in acc.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                // Same order as one tdpbf16ps row: pair by pair, even element first.
                for kk in 0..geo.k_step() {
                    *v +=
                        bf16::to_f32(sa[geo.a_index(r, kk)]) * bf16::to_f32(sb[geo.b_index(j, kk)]);
                }
            }
        }
    }
    // SAFETY: as in f32_block.
    unsafe { add_into(&acc, c, ldc) }
}

/// # Safety
/// See the block-kernel contract in [`crate::kernels`].
pub(crate) unsafe fn i8_block(
    a: *const i8,
    b: *const i8,
    steps: usize,
    c: *mut i32,
    ldc: usize,
    _rows: usize,
) {
    let geo = Geometry::I8;
    // SAFETY: as in f32_block.
    let (a, b) = unsafe { panels(a, b, steps, geo) };
    let mut acc = [[0i32; BLOCK_COLS]; BLOCK_ROWS];
    for s in 0..steps {
        let (sa, sb) = (
            &a[s * geo.step_len()..][..geo.step_len()],
            &b[s * geo.step_len()..][..geo.step_len()],
        );
        for (r, row) in acc.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                for kk in 0..geo.k_step() {
                    *v += sa[geo.a_index(r, kk)] as i32 * sb[geo.b_index(j, kk)] as i32;
                }
            }
        }
    }
    // SAFETY: as in f32_block.
    unsafe { add_into(&acc, c, ldc) }
}

/// # Safety
/// `a` and `b` must each point at `steps * geo.step_len()` readable elements.
unsafe fn panels<'p, A, B>(
    a: *const A,
    b: *const B,
    steps: usize,
    geo: Geometry,
) -> (&'p [A], &'p [B]) {
    let len = steps * geo.step_len();
    // SAFETY: forwarded from the caller.
    unsafe {
        (
            std::slice::from_raw_parts(a, len),
            std::slice::from_raw_parts(b, len),
        )
    }
}

/// # Safety
/// `c` must point at 32 rows of `ldc >= 32` writable elements.
pub(crate) unsafe fn add_into<T: Copy + std::ops::AddAssign>(
    acc: &[[T; BLOCK_COLS]; BLOCK_ROWS],
    c: *mut T,
    ldc: usize,
) {
    debug_assert!(ldc >= BLOCK_COLS);
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: row r of the block lies inside the caller's C block.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), BLOCK_COLS) };
        for (d, v) in dst.iter_mut().zip(row) {
            *d += *v;
        }
    }
}
