//! The blocked layouts every kernel path shares, and packing into them.
//!
//! C is computed in blocks of [`BLOCK_ROWS`] × [`BLOCK_COLS`]. K is walked in *steps*: 1 value
//! for f32, 32 for bf16 (one AMX bf16 tile row), 64 for int8 (one AMX int8 tile row). Packed
//! operands are arrays of panels; a panel is one block's rows (A) or columns (B) for every step,
//! each step contiguous, so a kernel streams `steps × step_len` elements with no strides.
//!
//! Within a bf16/int8 step, A is two 16-row tiles, row-major (64 bytes a row), and B is two
//! 16-column tiles in the VNNI layout: row `p` of a tile holds, for each of its 16 columns, the
//! K values `2p, 2p+1` (bf16 pairs) or `4p..4p+4` (int8 quads). That is exactly what
//! `tileloadd` with a 64-byte stride, `vdpbf16ps` and `vpdpbusd` consume. Shapes that are not
//! multiples of the block or step are padded with zeros, which add nothing to any sum.

use crate::aligned::{AlignedVec, Zeroable};
use crate::bf16;

/// Rows of C a kernel computes per call (two AMX tiles high).
pub const BLOCK_ROWS: usize = 32;
/// Columns of C a kernel computes per call (two AMX tiles wide).
pub const BLOCK_COLS: usize = 32;
/// Rows in one AMX tile.
pub const TILE_ROWS: usize = 16;
/// Bytes in one AMX tile row.
pub const TILE_ROW_BYTES: usize = 64;

/// Where each element of one K step lives inside a packed step, per element family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Geometry {
    F32,
    Bf16,
    I8,
}

impl Geometry {
    /// K values per step.
    pub(crate) const fn k_step(self) -> usize {
        match self {
            Geometry::F32 => 1,
            Geometry::Bf16 => TILE_ROW_BYTES / 2,
            Geometry::I8 => TILE_ROW_BYTES,
        }
    }

    /// Elements in one packed step of a panel (the same for A and B).
    pub(crate) const fn step_len(self) -> usize {
        BLOCK_ROWS * self.k_step()
    }

    /// Index in a packed A step of row `r` (0..32), K offset `kk` (0..k_step).
    #[inline]
    pub(crate) fn a_index(self, r: usize, kk: usize) -> usize {
        match self {
            Geometry::F32 => r,
            Geometry::Bf16 | Geometry::I8 => {
                let row_len = self.k_step();
                (r / TILE_ROWS) * TILE_ROWS * row_len + (r % TILE_ROWS) * row_len + kk
            }
        }
    }

    /// Index in a packed B step of column `c` (0..32), K offset `kk` (0..k_step).
    #[inline]
    pub(crate) fn b_index(self, c: usize, kk: usize) -> usize {
        match self {
            Geometry::F32 => c,
            Geometry::Bf16 | Geometry::I8 => {
                let group = TILE_ROW_BYTES / TILE_ROWS / self.elem_bytes(); // 2 (bf16) or 4 (i8)
                let row_len = self.k_step();
                (c / TILE_ROWS) * TILE_ROWS * row_len
                    + (kk / group) * row_len
                    + (c % TILE_ROWS) * group
                    + kk % group
            }
        }
    }

    const fn elem_bytes(self) -> usize {
        match self {
            Geometry::F32 => 4,
            Geometry::Bf16 => 2,
            Geometry::I8 => 1,
        }
    }

    /// Number of steps covering `k` values.
    pub(crate) const fn steps(self, k: usize) -> usize {
        k.div_ceil(self.k_step())
    }
}

/// Number of blocks covering `len` rows or columns.
pub(crate) const fn blocks(len: usize) -> usize {
    len.div_ceil(BLOCK_ROWS)
}

/// Packs an `rows × k` operand (A when `as_a`, else Bᵀ with `rows` = columns of B) whose
/// element (row, k) is `get(row, k)`, padding with zeros.
pub(crate) fn pack<T: Zeroable>(
    geo: Geometry,
    rows: usize,
    k: usize,
    as_a: bool,
    get: impl Fn(usize, usize) -> T,
) -> AlignedVec<T> {
    let steps = geo.steps(k);
    let panels = blocks(rows);
    let mut out = AlignedVec::<T>::zeroed(panels * steps * geo.step_len());
    for p in 0..panels {
        for s in 0..steps {
            let step = &mut out[(p * steps + s) * geo.step_len()..][..geo.step_len()];
            let rows_here = (rows - p * BLOCK_ROWS).min(BLOCK_ROWS);
            let k_here = (k - s * geo.k_step()).min(geo.k_step());
            for r in 0..rows_here {
                for kk in 0..k_here {
                    let at = if as_a {
                        geo.a_index(r, kk)
                    } else {
                        geo.b_index(r, kk)
                    };
                    step[at] = get(p * BLOCK_ROWS + r, s * geo.k_step() + kk);
                }
            }
        }
    }
    out
}

/// Packs activations A (`m × k`, row-major) into row panels, converting each element with
/// `convert`. Each (row, step) is one contiguous run in both layouts except f32, whose steps
/// are columns; panels are packed in parallel when `parallel`.
pub(crate) fn pack_a<S: Copy + Sync, T: Zeroable + Send>(
    geo: Geometry,
    m: usize,
    k: usize,
    a: &[S],
    parallel: bool,
    convert: impl Fn(S) -> T + Sync,
) -> AlignedVec<T> {
    assert_eq!(a.len(), m * k, "A must hold m * k values");
    let steps = geo.steps(k);
    let panel_len = steps * geo.step_len();
    let mut out = AlignedVec::<T>::zeroed(blocks(m) * panel_len);
    let fill = |(p, panel): (usize, &mut [T])| {
        let rows_here = (m - p * BLOCK_ROWS).min(BLOCK_ROWS);
        for r in 0..rows_here {
            let src = &a[(p * BLOCK_ROWS + r) * k..][..k];
            for (s, chunk) in src.chunks(geo.k_step()).enumerate() {
                let step = &mut panel[s * geo.step_len()..][..geo.step_len()];
                match geo {
                    Geometry::F32 => step[r] = convert(chunk[0]),
                    Geometry::Bf16 | Geometry::I8 => {
                        let at = geo.a_index(r, 0);
                        for (d, v) in step[at..at + chunk.len()].iter_mut().zip(chunk) {
                            *d = convert(*v);
                        }
                    }
                }
            }
        }
    };
    if panel_len == 0 {
        return out;
    }
    if parallel {
        crate::team::chunks_mut(&mut out, panel_len, |p, panel| fill((p, panel)));
    } else {
        out.chunks_mut(panel_len).enumerate().for_each(fill);
    }
    out
}

macro_rules! packed_b {
    ($(#[$doc:meta])* $name:ident, $elem:ty, $geo:expr $(, $extra:ident: $extra_ty:ty)?) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            k: usize,
            n: usize,
            data: AlignedVec<$elem>,
            $($extra: $extra_ty,)?
        }

        impl $name {
            /// Depth (rows of B, columns of A).
            pub fn k(&self) -> usize {
                self.k
            }

            /// Output width (columns of B and of C).
            pub fn n(&self) -> usize {
                self.n
            }

            pub(crate) fn data(&self) -> &[$elem] {
                &self.data
            }
        }
    };
}

packed_b!(
    /// f32 weights B (K × N) in the blocked layout.
    PackedF32, f32, Geometry::F32
);
packed_b!(
    /// bf16 weights B (K × N) in the VNNI pair layout, rounded to nearest even on packing.
    PackedBf16, u16, Geometry::Bf16
);
packed_b!(
    /// int8 weights B (K × N) in the VNNI quad layout, with each column's sum kept for the
    /// unsigned×signed kernels.
    PackedI8, i8, Geometry::I8, col_sums: Vec<i32>
);

impl PackedF32 {
    /// Packs `w`, a K × N row-major matrix (y = x · w).
    pub fn from_k_by_n(k: usize, n: usize, w: &[f32]) -> Self {
        assert_eq!(w.len(), k * n, "weights must hold k * n values");
        Self {
            k,
            n,
            data: pack(Geometry::F32, n, k, false, |col, kk| w[kk * n + col]),
        }
    }

    /// Packs `w`, an N × K row-major matrix (PyTorch's `[out, in]`; y = x · wᵀ).
    pub fn from_n_by_k(n: usize, k: usize, w: &[f32]) -> Self {
        assert_eq!(w.len(), k * n, "weights must hold k * n values");
        Self {
            k,
            n,
            data: pack(Geometry::F32, n, k, false, |col, kk| w[col * k + kk]),
        }
    }
}

impl PackedBf16 {
    /// Packs `w`, a K × N row-major f32 matrix, rounding each value to bf16.
    pub fn from_k_by_n(k: usize, n: usize, w: &[f32]) -> Self {
        assert_eq!(w.len(), k * n, "weights must hold k * n values");
        Self {
            k,
            n,
            data: pack(Geometry::Bf16, n, k, false, |col, kk| {
                bf16::from_f32(w[kk * n + col])
            }),
        }
    }

    /// Packs `w`, an N × K row-major f32 matrix (`[out, in]`), rounding each value to bf16.
    pub fn from_n_by_k(n: usize, k: usize, w: &[f32]) -> Self {
        assert_eq!(w.len(), k * n, "weights must hold k * n values");
        Self {
            k,
            n,
            data: pack(Geometry::Bf16, n, k, false, |col, kk| {
                bf16::from_f32(w[col * k + kk])
            }),
        }
    }

    /// Packs `w`, an N × K row-major matrix of bf16 bit patterns (`[out, in]`).
    pub fn from_bf16_n_by_k(n: usize, k: usize, w: &[u16]) -> Self {
        assert_eq!(w.len(), k * n, "weights must hold k * n values");
        Self {
            k,
            n,
            data: pack(Geometry::Bf16, n, k, false, |col, kk| w[col * k + kk]),
        }
    }
}

/// Largest K the int8 GEMM accepts: keeps every i32 sum exact on all paths, including the
/// unsigned-offset one (255 · 128 · K < 2³¹).
pub const INT8_DEPTH_MAX: usize = 65_536;

impl PackedI8 {
    /// Packs `w`, a K × N row-major matrix.
    pub fn from_k_by_n(k: usize, n: usize, w: &[i8]) -> Self {
        assert_eq!(w.len(), k * n, "weights must hold k * n values");
        Self::build(k, n, |col, kk| w[kk * n + col])
    }

    /// Packs `w`, an N × K row-major matrix (`[out, in]`).
    pub fn from_n_by_k(n: usize, k: usize, w: &[i8]) -> Self {
        assert_eq!(w.len(), k * n, "weights must hold k * n values");
        Self::build(k, n, |col, kk| w[col * k + kk])
    }

    fn build(k: usize, n: usize, get: impl Fn(usize, usize) -> i8) -> Self {
        assert!(
            k <= INT8_DEPTH_MAX,
            "int8 depth {k} exceeds INT8_DEPTH_MAX ({INT8_DEPTH_MAX})"
        );
        let col_sums = (0..n)
            .map(|col| (0..k).map(|kk| get(col, kk) as i32).sum())
            .collect();
        Self {
            k,
            n,
            data: pack(Geometry::I8, n, k, false, get),
            col_sums,
        }
    }

    /// `Σ_k b[k][j]` for each column j.
    pub(crate) fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_in_block_position_has_its_own_slot() {
        for geo in [Geometry::F32, Geometry::Bf16, Geometry::I8] {
            let mut seen_a = vec![false; geo.step_len()];
            let mut seen_b = vec![false; geo.step_len()];
            for r in 0..BLOCK_ROWS {
                for kk in 0..geo.k_step() {
                    assert!(!std::mem::replace(&mut seen_a[geo.a_index(r, kk)], true));
                    assert!(!std::mem::replace(&mut seen_b[geo.b_index(r, kk)], true));
                }
            }
            assert!(
                seen_a.iter().all(|s| *s) && seen_b.iter().all(|s| *s),
                "{geo:?}"
            );
        }
    }

    #[test]
    fn bf16_b_tile_row_holds_pairs_of_k_per_column() {
        // Row p of the first B tile: columns 0..16, each with K = 2p and 2p + 1.
        let geo = Geometry::Bf16;
        assert_eq!(geo.b_index(0, 0), 0);
        assert_eq!(geo.b_index(0, 1), 1);
        assert_eq!(geo.b_index(1, 0), 2);
        assert_eq!(geo.b_index(0, 2), 32);
        assert_eq!(geo.b_index(16, 0), 512);
    }

    #[test]
    fn padding_beyond_the_matrix_is_zero() {
        let w: Vec<i8> = (0..3 * 5).map(|i| i as i8 + 1).collect();
        let packed = PackedI8::from_k_by_n(3, 5, &w);
        let nonzero = packed.data().iter().filter(|v| **v != 0).count();
        assert_eq!(nonzero, 15);
        assert_eq!(packed.data().len(), Geometry::I8.step_len());
    }
}
