//! Intel AMX: the per-process permission, the tile configuration, and the tile block kernels.
//!
//! Linux hands out the (8 KiB) tile data state only to processes that ask for it with
//! `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; [`request_permission`] does that once
//! per process and remembers the answer. Tile registers are per thread: a [`Tiles`]
//! implementation is configured on the thread that uses it and released when dropped.
//!
//! AMX intrinsics are unstable in Rust, so [`hw`] speaks to the tiles through `asm!` with the
//! instruction mnemonics. The block kernels in `micro` are generic over [`Tiles`], so the same
//! kernel code also runs on [`emu`], a software model of the tile unit, on machines without AMX.

pub mod emu;
pub mod hw;
pub(crate) mod micro;

use std::sync::OnceLock;

use crate::Error;
use crate::cpu::Features;
use crate::pack::{TILE_ROW_BYTES, TILE_ROWS};

/// `arch_prctl` code asking for permission to use an extended state component.
const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
/// The XSAVE component number of AMX tile data.
const XFEATURE_XTILEDATA: libc::c_ulong = 18;

/// Asks the kernel, once per process, for the AMX tile data state. Thread-safe; later calls
/// return the first answer.
pub fn request_permission() -> Result<(), Error> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    let answer = ANSWER.get_or_init(|| {
        let host = Features::host();
        if !host.amx_tile {
            return Err(format!("this CPU has no AMX-TILE (has: {host})"));
        }
        ask_kernel()
    });
    answer
        .clone()
        .map_err(|reason| Error::AmxPermission { reason })
}

#[cfg(target_os = "linux")]
fn ask_kernel() -> Result<(), String> {
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes this process's permitted
    // XSAVE features; it reads no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

#[cfg(not(target_os = "linux"))]
fn ask_kernel() -> Result<(), String> {
    Err("AMX permission is only requested on Linux".to_string())
}

/// The 64-byte operand of `ldtilecfg`: palette 1, then bytes per row and rows for each tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct TileConfig {
    pub palette: u8,
    pub start_row: u8,
    reserved: [u8; 14],
    pub colsb: [u16; 16],
    pub rows: [u8; 16],
}

const _: () = assert!(size_of::<TileConfig>() == 64);

/// Tiles the block kernels use; every one is a full 16 rows × 64 bytes.
pub const TILES_USED: usize = 8;

impl TileConfig {
    /// The configuration every block kernel runs under: tmm0–3 hold the four 16 × 16 quarters
    /// of a 32 × 32 C block, tmm4–5 two A tiles, tmm6–7 two B tiles.
    pub const fn blocks() -> TileConfig {
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        let mut t = 0;
        while t < TILES_USED {
            cfg.colsb[t] = TILE_ROW_BYTES as u16;
            cfg.rows[t] = TILE_ROWS as u8;
            t += 1;
        }
        cfg
    }
}

/// The tile unit as the block kernels see it: eight tile registers, named by const generics.
///
/// # Safety
/// Every method touches raw memory: `load` reads `rows` rows of `colsb` bytes at `src + r *
/// stride`, `store` writes them at `dst + r * stride`; the caller guarantees those bytes.
pub trait Tiles {
    /// `tileloadd tmmT, [src + stride]`.
    ///
    /// # Safety
    /// `src + r * stride` must be readable for `colsb` bytes, for every configured row r.
    unsafe fn load<const T: u8>(&mut self, src: *const u8, stride: usize);
    /// `tilestored [dst + stride], tmmT`.
    ///
    /// # Safety
    /// `dst + r * stride` must be writable for `colsb` bytes, for every configured row r.
    unsafe fn store<const T: u8>(&mut self, dst: *mut u8, stride: usize);
    /// `tdpbf16ps tmmC, tmmA, tmmB`: f32 C += bf16 A · bf16 B (pairs of K).
    fn dot_bf16<const C: u8, const A: u8, const B: u8>(&mut self);
    /// `tdpbssd tmmC, tmmA, tmmB`: i32 C += s8 A · s8 B (quads of K).
    fn dot_i8<const C: u8, const A: u8, const B: u8>(&mut self);
}
