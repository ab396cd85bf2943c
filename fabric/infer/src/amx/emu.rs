//! A software model of the AMX tile unit, following the instruction definitions: rows and
//! bytes per row come from the loaded [`TileConfig`], `tdpbf16ps` widens bf16 to f32 and adds
//! the even then the odd product of each pair, `tdpbssd` sums signed byte quads into i32.
//!
//! It exists so the tile block kernels, byte for byte the code that drives the real unit, are
//! tested on machines without AMX. It is slow and only for tests.

use super::{TileConfig, Tiles};
use crate::bf16;

/// Largest tile, bytes (16 rows × 64 bytes).
const TILE_BYTES_MAX: usize = 1024;

/// Eight emulated tile registers under one configuration.
pub struct EmuTiles {
    cfg: TileConfig,
    regs: [[u8; TILE_BYTES_MAX]; 8],
}

impl EmuTiles {
    /// `ldtilecfg`: every tile is zeroed, as on hardware.
    pub fn configure(cfg: &TileConfig) -> EmuTiles {
        assert_eq!(cfg.palette, 1, "only palette 1 exists");
        for t in 0..8 {
            assert!(
                cfg.rows[t] as usize <= 16 && cfg.colsb[t] as usize <= 64,
                "tile {t} exceeds palette 1 limits"
            );
        }
        EmuTiles {
            cfg: *cfg,
            regs: [[0; TILE_BYTES_MAX]; 8],
        }
    }

    fn shape(&self, t: u8) -> (usize, usize) {
        let t = t as usize;
        assert!(t < 8, "tmm{t} does not exist");
        (self.cfg.rows[t] as usize, self.cfg.colsb[t] as usize)
    }

    fn f32_at(&self, t: u8, row: usize, col: usize) -> f32 {
        let at = row * 64 + col * 4;
        f32::from_le_bytes(self.regs[t as usize][at..at + 4].try_into().unwrap())
    }

    fn u16_at(&self, t: u8, row: usize, col: usize) -> u16 {
        let at = row * 64 + col * 2;
        u16::from_le_bytes(self.regs[t as usize][at..at + 2].try_into().unwrap())
    }

    /// The shape checks `tdp*` raises #UD for, as asserts.
    fn check_dot(&self, c: u8, a: u8, b: u8) -> (usize, usize, usize) {
        assert!(
            c != a && c != b && a != b,
            "tdp* needs three distinct tiles"
        );
        let ((m, c_cols), (a_rows, a_cols), (b_rows, b_cols)) =
            (self.shape(c), self.shape(a), self.shape(b));
        assert_eq!(a_rows, m, "A rows must equal C rows");
        assert_eq!(b_cols, c_cols, "B bytes per row must equal C bytes per row");
        assert_eq!(b_rows * 4, a_cols, "B rows must be A bytes per row / 4");
        (m, c_cols / 4, a_cols / 4)
    }
}

impl Tiles for EmuTiles {
    unsafe fn load<const T: u8>(&mut self, src: *const u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        self.regs[T as usize] = [0; TILE_BYTES_MAX];
        for r in 0..rows {
            // SAFETY: the caller guarantees colsb readable bytes at src + r * stride.
            let row = unsafe { std::slice::from_raw_parts(src.add(r * stride), colsb) };
            self.regs[T as usize][r * 64..r * 64 + colsb].copy_from_slice(row);
        }
    }

    unsafe fn store<const T: u8>(&mut self, dst: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        for r in 0..rows {
            // SAFETY: the caller guarantees colsb writable bytes at dst + r * stride.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.add(r * stride), colsb) };
            row.copy_from_slice(&self.regs[T as usize][r * 64..r * 64 + colsb]);
        }
    }

    fn dot_bf16<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (m, n, k) = self.check_dot(C, A, B);
        for i in 0..m {
            for j in 0..n {
                let mut acc = self.f32_at(C, i, j);
                for p in 0..k {
                    acc += bf16::to_f32(self.u16_at(A, i, 2 * p))
                        * bf16::to_f32(self.u16_at(B, p, 2 * j));
                    acc += bf16::to_f32(self.u16_at(A, i, 2 * p + 1))
                        * bf16::to_f32(self.u16_at(B, p, 2 * j + 1));
                }
                self.regs[C as usize][i * 64 + j * 4..][..4].copy_from_slice(&acc.to_le_bytes());
            }
        }
    }

    fn dot_i8<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (m, n, k) = self.check_dot(C, A, B);
        for i in 0..m {
            for j in 0..n {
                let at = i * 64 + j * 4;
                let mut acc =
                    i32::from_le_bytes(self.regs[C as usize][at..at + 4].try_into().unwrap());
                for p in 0..k {
                    for q in 0..4 {
                        let a = self.regs[A as usize][i * 64 + 4 * p + q] as i8 as i32;
                        let b = self.regs[B as usize][p * 64 + 4 * j + q] as i8 as i32;
                        acc = acc.wrapping_add(a * b);
                    }
                }
                self.regs[C as usize][at..at + 4].copy_from_slice(&acc.to_le_bytes());
            }
        }
    }
}
