//! The tile block kernels: one 32 × 32 block of C in tmm0–3 (quarters), A in tmm4–5 (top and
//! bottom 16 rows), B in tmm6–7 (left and right 16 columns). Per K step: two A loads, two B
//! loads, four dot products, each A and B tile used twice. C is loaded from memory first and
//! stored back after the last step, so the kernel accumulates, like every other path.

use super::Tiles;
use crate::pack::{BLOCK_COLS, Geometry, TILE_ROW_BYTES, TILE_ROWS};

/// Bytes from one tile of a packed step to the next (16 rows × 64 bytes).
const TILE_BYTES: usize = TILE_ROWS * TILE_ROW_BYTES;

/// # Safety
/// The block-kernel contract in [`crate::kernels`]; `tiles` configured with
/// [`super::TileConfig::blocks`].
pub(crate) unsafe fn bf16_block<T: Tiles>(
    tiles: &mut T,
    a: *const u16,
    b: *const u16,
    steps: usize,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: forwarded from the caller; the step length in bytes is the same for both kinds.
    unsafe {
        block(
            tiles,
            a.cast(),
            b.cast(),
            steps,
            Geometry::Bf16.step_len() * 2,
            c.cast(),
            ldc * 4,
            T::dot_bf16::<0, 4, 6>,
            T::dot_bf16::<1, 4, 7>,
            T::dot_bf16::<2, 5, 6>,
            T::dot_bf16::<3, 5, 7>,
        )
    }
}

/// # Safety
/// As for [`bf16_block`].
pub(crate) unsafe fn i8_block<T: Tiles>(
    tiles: &mut T,
    a: *const i8,
    b: *const i8,
    steps: usize,
    c: *mut i32,
    ldc: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        block(
            tiles,
            a.cast(),
            b.cast(),
            steps,
            Geometry::I8.step_len(),
            c.cast(),
            ldc * 4,
            T::dot_i8::<0, 4, 6>,
            T::dot_i8::<1, 4, 7>,
            T::dot_i8::<2, 5, 6>,
            T::dot_i8::<3, 5, 7>,
        )
    }
}

/// The shared loop; `dots` are the four products (C quarter, A tile, B tile) in order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<T: Tiles>(
    tiles: &mut T,
    a: *const u8,
    b: *const u8,
    steps: usize,
    step_bytes: usize,
    c: *mut u8,
    c_stride_bytes: usize,
    dot00: fn(&mut T),
    dot01: fn(&mut T),
    dot10: fn(&mut T),
    dot11: fn(&mut T),
) {
    debug_assert_eq!(step_bytes, 2 * TILE_BYTES);
    debug_assert!(c_stride_bytes >= BLOCK_COLS * 4);
    let half_cols = TILE_ROW_BYTES; // 16 f32 or i32
    let half_rows = TILE_ROWS * c_stride_bytes;
    // SAFETY: the caller guarantees the 32 × 32 C block, and `steps` packed steps of A and B,
    // each two contiguous 1 KiB tiles with 64-byte rows.
    unsafe {
        tiles.load::<0>(c, c_stride_bytes);
        tiles.load::<1>(c.add(half_cols), c_stride_bytes);
        tiles.load::<2>(c.add(half_rows), c_stride_bytes);
        tiles.load::<3>(c.add(half_rows + half_cols), c_stride_bytes);
        for s in 0..steps {
            let (sa, sb) = (a.add(s * step_bytes), b.add(s * step_bytes));
            tiles.load::<4>(sa, TILE_ROW_BYTES);
            tiles.load::<6>(sb, TILE_ROW_BYTES);
            dot00(tiles);
            tiles.load::<7>(sb.add(TILE_BYTES), TILE_ROW_BYTES);
            dot01(tiles);
            tiles.load::<5>(sa.add(TILE_BYTES), TILE_ROW_BYTES);
            dot10(tiles);
            dot11(tiles);
        }
        tiles.store::<0>(c, c_stride_bytes);
        tiles.store::<1>(c.add(half_cols), c_stride_bytes);
        tiles.store::<2>(c.add(half_rows), c_stride_bytes);
        tiles.store::<3>(c.add(half_rows + half_cols), c_stride_bytes);
    }
}
