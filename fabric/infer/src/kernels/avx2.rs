//! AVX2 + FMA block kernels. bf16 is widened to f32 (a shift, exact) and multiplied with FMA;
//! int8 is widened to i16 and multiplied with `vpmaddwd`, which cannot saturate, so int8 results
//! are exact. Each kernel sweeps the 32 × 32 block in register-sized sub-blocks.

use std::arch::x86_64::*;

use crate::pack::{BLOCK_COLS, BLOCK_ROWS, Geometry, TILE_ROWS};

/// Rows of C held in registers at once.
const SUB_ROWS: usize = 4;
/// Columns of C per sub-block: one AMX tile width, two ymm of f32.
const SUB_COLS: usize = TILE_ROWS;

/// # Safety
/// The block-kernel contract in [`crate::kernels`], and the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn f32_block(
    a: *const f32,
    b: *const f32,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
) {
    for half in 0..BLOCK_COLS / SUB_COLS {
        for rg in 0..rows.min(BLOCK_ROWS).div_ceil(SUB_ROWS) {
            let mut acc = [[_mm256_setzero_ps(); 2]; SUB_ROWS];
            for s in 0..steps {
                // SAFETY: step s of each panel holds 32 values; offsets stay below 32.
                unsafe {
                    let bp = b.add(s * BLOCK_COLS + half * SUB_COLS);
                    let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)));
                    let ap = a.add(s * BLOCK_ROWS + rg * SUB_ROWS);
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let av = _mm256_broadcast_ss(&*ap.add(r));
                        acc_r[0] = _mm256_fmadd_ps(av, b0, acc_r[0]);
                        acc_r[1] = _mm256_fmadd_ps(av, b1, acc_r[1]);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                // SAFETY: row rg*4+r, columns half*16..half*16+16 lie inside the C block.
                unsafe { add_f32x16(c.add((rg * SUB_ROWS + r) * ldc + half * SUB_COLS), acc_r) }
            }
        }
    }
}

/// # Safety
/// The block-kernel contract in [`crate::kernels`], and the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn bf16_block(
    a: *const u16,
    b: *const u16,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
) {
    let geo = Geometry::Bf16;
    let pairs = geo.k_step() / 2;
    let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
    for half in 0..BLOCK_COLS / SUB_COLS {
        for rg in 0..rows.min(BLOCK_ROWS).div_ceil(SUB_ROWS) {
            let mut acc = [[_mm256_setzero_ps(); 2]; SUB_ROWS];
            for s in 0..steps {
                for p in 0..pairs {
                    // SAFETY: b_index(half*16, 2p) + 32 and a_index(row, 2p) + 2 stay inside step s.
                    unsafe {
                        let bp = b.add(s * geo.step_len() + geo.b_index(half * SUB_COLS, 2 * p));
                        let (raw0, raw1) = (
                            _mm256_loadu_si256(bp.cast()),
                            _mm256_loadu_si256(bp.add(16).cast()),
                        );
                        let (even0, odd0) = (
                            _mm256_castsi256_ps(_mm256_slli_epi32(raw0, 16)),
                            _mm256_castsi256_ps(_mm256_and_si256(raw0, high)),
                        );
                        let (even1, odd1) = (
                            _mm256_castsi256_ps(_mm256_slli_epi32(raw1, 16)),
                            _mm256_castsi256_ps(_mm256_and_si256(raw1, high)),
                        );
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let ap =
                                a.add(s * geo.step_len() + geo.a_index(rg * SUB_ROWS + r, 2 * p));
                            let pair = _mm256_set1_epi32(ap.cast::<i32>().read_unaligned());
                            let a_even = _mm256_castsi256_ps(_mm256_slli_epi32(pair, 16));
                            let a_odd = _mm256_castsi256_ps(_mm256_and_si256(pair, high));
                            acc_r[0] = _mm256_fmadd_ps(
                                a_odd,
                                odd0,
                                _mm256_fmadd_ps(a_even, even0, acc_r[0]),
                            );
                            acc_r[1] = _mm256_fmadd_ps(
                                a_odd,
                                odd1,
                                _mm256_fmadd_ps(a_even, even1, acc_r[1]),
                            );
                        }
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                // SAFETY: as in f32_block.
                unsafe { add_f32x16(c.add((rg * SUB_ROWS + r) * ldc + half * SUB_COLS), acc_r) }
            }
        }
    }
}

/// Rows of C per int8 sub-block (each row needs four i32 accumulators per 16 columns).
const I8_SUB_ROWS: usize = 2;

/// # Safety
/// The block-kernel contract in [`crate::kernels`], and the CPU must have AVX2.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn i8_block(
    a: *const i8,
    b: *const i8,
    steps: usize,
    c: *mut i32,
    ldc: usize,
    rows: usize,
) {
    let geo = Geometry::I8;
    let quads = geo.k_step() / 4;
    for half in 0..BLOCK_COLS / SUB_COLS {
        for rg in 0..rows.min(BLOCK_ROWS).div_ceil(I8_SUB_ROWS) {
            // acc[r][g]: lanes (2j, 2j+1) are two partial sums of column half*16 + 4g + j.
            let mut acc = [[_mm256_setzero_si256(); 4]; I8_SUB_ROWS];
            for s in 0..steps {
                for q in 0..quads {
                    // SAFETY: one B tile row (64 bytes) and one A quad (4 bytes) inside step s.
                    unsafe {
                        let bp = b.add(s * geo.step_len() + geo.b_index(half * SUB_COLS, 4 * q));
                        let bw: [__m256i; 4] = std::array::from_fn(|g| {
                            _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(16 * g).cast()))
                        });
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let ap = a
                                .add(s * geo.step_len() + geo.a_index(rg * I8_SUB_ROWS + r, 4 * q));
                            let aw = _mm256_cvtepi8_epi16(_mm_set1_epi32(
                                ap.cast::<i32>().read_unaligned(),
                            ));
                            for (acc_g, bw_g) in acc_r.iter_mut().zip(&bw) {
                                *acc_g = _mm256_add_epi32(*acc_g, _mm256_madd_epi16(aw, *bw_g));
                            }
                        }
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let mut sums = [0i32; SUB_COLS];
                for (g, acc_g) in acc_r.iter().enumerate() {
                    let mut lanes = [0i32; 8];
                    // SAFETY: lanes is 32 bytes, the size of one ymm.
                    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *acc_g) };
                    for j in 0..4 {
                        sums[4 * g + j] = lanes[2 * j] + lanes[2 * j + 1];
                    }
                }
                // SAFETY: row rg*2+r, columns half*16..half*16+16 lie inside the C block.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        c.add((rg * I8_SUB_ROWS + r) * ldc + half * SUB_COLS),
                        SUB_COLS,
                    )
                };
                for (d, v) in dst.iter_mut().zip(sums) {
                    *d += v;
                }
            }
        }
    }
}

/// # Safety
/// `c` must point at 16 writable f32.
#[target_feature(enable = "avx2,fma")]
unsafe fn add_f32x16(c: *mut f32, acc: &[__m256; 2]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        _mm256_storeu_ps(c, _mm256_add_ps(_mm256_loadu_ps(c), acc[0]));
        _mm256_storeu_ps(c.add(8), _mm256_add_ps(_mm256_loadu_ps(c.add(8)), acc[1]));
    }
}
