//! The real tile unit, through `asm!`. Each [`Tiles`] method is one instruction; tile register
//! numbers are const generics, so they are immediates in the encoding. The compiler never
//! allocates tile registers itself, so their contents survive between `asm!` blocks on the
//! thread that configured them.

use std::arch::asm;
use std::marker::PhantomData;

use super::{TileConfig, Tiles, request_permission};
use crate::Error;

/// Configured tiles on the current thread. `!Send`: tile state belongs to one thread.
/// Dropping it runs `tilerelease`.
pub struct HwTiles {
    _one_thread: PhantomData<*const ()>,
}

impl HwTiles {
    /// Requests AMX permission (once per process) and loads `cfg` into this thread's tiles.
    pub fn configure(cfg: &TileConfig) -> Result<HwTiles, Error> {
        request_permission()?;
        // SAFETY: permission is granted, so AMX instructions are enabled for this process;
        // cfg is a valid 64-byte palette-1 configuration that lives across the instruction.
        unsafe {
            asm!("ldtilecfg [{cfg}]", cfg = in(reg) cfg as *const TileConfig, options(nostack, readonly))
        };
        Ok(HwTiles {
            _one_thread: PhantomData,
        })
    }

    /// Runs `iters` rounds of the block kernel's four bf16 dot products on whatever the tiles
    /// hold, with no loads or stores: the throughput ceiling of the tile unit.
    pub fn register_only_bf16(&mut self, iters: u64) {
        assert!(iters > 0);
        // SAFETY: tiles are configured (we hold HwTiles); the loop touches registers only.
        unsafe {
            asm!(
                "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                "tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7",
                "2:",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters => _,
                options(nostack, nomem),
            )
        }
    }

    /// As [`HwTiles::register_only_bf16`], with int8 dot products.
    pub fn register_only_i8(&mut self, iters: u64) {
        assert!(iters > 0);
        // SAFETY: as in register_only_bf16.
        unsafe {
            asm!(
                "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                "tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7",
                "2:",
                "tdpbssd tmm0, tmm4, tmm6",
                "tdpbssd tmm1, tmm4, tmm7",
                "tdpbssd tmm2, tmm5, tmm6",
                "tdpbssd tmm3, tmm5, tmm7",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters => _,
                options(nostack, nomem),
            )
        }
    }
}

impl Drop for HwTiles {
    fn drop(&mut self) {
        // SAFETY: tiles were configured on this thread (HwTiles is !Send); tilerelease returns
        // them to the init state and touches no memory.
        unsafe { asm!("tilerelease", options(nostack, nomem)) }
    }
}

impl Tiles for HwTiles {
    #[inline(always)]
    unsafe fn load<const T: u8>(&mut self, src: *const u8, stride: usize) {
        // SAFETY: the caller guarantees 16 rows of 64 bytes at src + r * stride.
        unsafe {
            asm!("tileloadd tmm{t}, [{src} + {stride}*1]", t = const T, src = in(reg) src, stride = in(reg) stride, options(nostack, readonly))
        }
    }

    #[inline(always)]
    unsafe fn store<const T: u8>(&mut self, dst: *mut u8, stride: usize) {
        // SAFETY: the caller guarantees 16 writable rows of 64 bytes at dst + r * stride.
        unsafe {
            asm!("tilestored [{dst} + {stride}*1], tmm{t}", t = const T, dst = in(reg) dst, stride = in(reg) stride, options(nostack))
        }
    }

    #[inline(always)]
    fn dot_bf16<const C: u8, const A: u8, const B: u8>(&mut self) {
        // SAFETY: tiles are configured (we hold HwTiles); the instruction touches registers only.
        unsafe {
            asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem))
        }
    }

    #[inline(always)]
    fn dot_i8<const C: u8, const A: u8, const B: u8>(&mut self) {
        // SAFETY: as in dot_bf16.
        unsafe {
            asm!("tdpbssd tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem))
        }
    }
}
