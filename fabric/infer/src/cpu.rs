//! What this processor can do, and which kernel path to use.
//!
//! AMX is found through CPUID leaf 7 (EDX bit 22 AMX-BF16, 24 AMX-TILE, 25 AMX-INT8) because
//! `is_x86_feature_detected!("amx-tile")` is still unstable; the AVX families go through the
//! standard macro. Detection runs once per process. The `FABRIC_INFER_KERNEL` environment
//! variable (`amx`, `avx512`, `avx2`, `scalar`, `auto`) forces a path so every path can be
//! exercised on one machine.

use std::fmt;
use std::sync::OnceLock;

use crate::Error;

/// Environment variable that forces a kernel path.
pub const KERNEL_ENV: &str = "FABRIC_INFER_KERNEL";

/// The instruction-set features the kernels care about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub amx_tile: bool,
    pub amx_bf16: bool,
    pub amx_int8: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512_bf16: bool,
    pub avx512_vnni: bool,
    pub avx2: bool,
    pub fma: bool,
}

impl Features {
    /// The features of the processor this process runs on (detected once).
    pub fn host() -> Features {
        static HOST: OnceLock<Features> = OnceLock::new();
        *HOST.get_or_init(detect)
    }

    /// Whether `path` can run every kernel family (f32, bf16 and int8) here.
    pub fn supports(&self, path: Path) -> bool {
        match path {
            Path::Amx => self.amx_tile && self.amx_bf16 && self.amx_int8,
            Path::Avx512 => self.avx512f && self.avx512bw && self.avx512_bf16 && self.avx512_vnni,
            Path::Avx2 => self.avx2 && self.fma,
            Path::Scalar => true,
        }
    }

    /// Every path this processor supports, fastest first.
    pub fn available_paths(&self) -> Vec<Path> {
        Path::ALL
            .into_iter()
            .filter(|p| self.supports(*p))
            .collect()
    }

    /// The fastest supported path.
    pub fn best_path(&self) -> Path {
        self.available_paths()[0]
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (self.amx_tile, "amx-tile"),
            (self.amx_bf16, "amx-bf16"),
            (self.amx_int8, "amx-int8"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512_bf16, "avx512-bf16"),
            (self.avx512_vnni, "avx512-vnni"),
            (self.avx2, "avx2"),
            (self.fma, "fma"),
        ];
        let on: Vec<&str> = names
            .iter()
            .filter(|(has, _)| *has)
            .map(|(_, n)| *n)
            .collect();
        if on.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&on.join(","))
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    const AMX_BF16_BIT: u32 = 22;
    const AMX_TILE_BIT: u32 = 24;
    const AMX_INT8_BIT: u32 = 25;
    let leaf0 = std::arch::x86_64::__cpuid(0);
    let edx7 = if leaf0.eax >= 7 {
        std::arch::x86_64::__cpuid_count(7, 0).edx
    } else {
        0
    };
    let bit = |b: u32| edx7 & (1 << b) != 0;
    Features {
        amx_tile: bit(AMX_TILE_BIT),
        amx_bf16: bit(AMX_BF16_BIT),
        amx_int8: bit(AMX_INT8_BIT),
        avx512f: std::is_x86_feature_detected!("avx512f"),
        avx512bw: std::is_x86_feature_detected!("avx512bw"),
        avx512_bf16: std::is_x86_feature_detected!("avx512bf16"),
        avx512_vnni: std::is_x86_feature_detected!("avx512vnni"),
        avx2: std::is_x86_feature_detected!("avx2"),
        fma: std::is_x86_feature_detected!("fma"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features::default()
}

/// A family of kernels sharing one instruction set.
///
/// AMX has no f32 matrix instruction, so on [`Path::Amx`] the f32 GEMM runs its AVX-512 kernel
/// (or AVX2 where AVX-512 is absent); bf16 and int8 run on tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    Amx,
    Avx512,
    Avx2,
    Scalar,
}

impl Path {
    /// Fastest first.
    pub const ALL: [Path; 4] = [Path::Amx, Path::Avx512, Path::Avx2, Path::Scalar];

    pub fn name(self) -> &'static str {
        match self {
            Path::Amx => "amx",
            Path::Avx512 => "avx512",
            Path::Avx2 => "avx2",
            Path::Scalar => "scalar",
        }
    }

    /// Parses a path name; `auto` (or empty) means "no preference" and yields `None`.
    pub fn parse(value: &str) -> Result<Option<Path>, Error> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(None),
            "amx" => Ok(Some(Path::Amx)),
            "avx512" | "avx-512" => Ok(Some(Path::Avx512)),
            "avx2" => Ok(Some(Path::Avx2)),
            "scalar" => Ok(Some(Path::Scalar)),
            _ => Err(Error::BadKernelOverride {
                value: value.to_string(),
            }),
        }
    }

    /// The path forced by `FABRIC_INFER_KERNEL`, if any.
    pub fn from_env() -> Result<Option<Path>, Error> {
        match std::env::var(KERNEL_ENV) {
            Ok(v) => Path::parse(&v),
            Err(_) => Ok(None),
        }
    }

    /// The path to use: the forced one if set and supported, else the best one here.
    pub fn select(forced: Option<Path>) -> Result<Path, Error> {
        let host = Features::host();
        match forced {
            None => Ok(host.best_path()),
            Some(p) if host.supports(p) => Ok(p),
            Some(p) => Err(Error::PathUnavailable {
                path: p.name().to_string(),
                available: host.to_string(),
            }),
        }
    }

    /// The path the f32 GEMM actually runs for this path (AMX has no f32 tiles).
    pub(crate) fn for_f32(self) -> Path {
        match self {
            Path::Amx => {
                let host = Features::host();
                if host.supports(Path::Avx512) {
                    Path::Avx512
                } else {
                    Path::Avx2
                }
            }
            p => p,
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_is_always_available_and_last() {
        let paths = Features::host().available_paths();
        assert_eq!(paths.last(), Some(&Path::Scalar));
        assert_eq!(Features::default().best_path(), Path::Scalar);
    }

    #[test]
    fn override_names_parse_and_garbage_is_refused() {
        assert_eq!(Path::parse("AMX").unwrap(), Some(Path::Amx));
        assert_eq!(Path::parse("auto").unwrap(), None);
        assert!(matches!(
            Path::parse("gpu"),
            Err(Error::BadKernelOverride { .. })
        ));
    }

    #[test]
    fn forcing_a_missing_path_names_what_the_cpu_has() {
        let host = Features::host();
        if let Some(missing) = Path::ALL.into_iter().find(|p| !host.supports(*p)) {
            let err = Path::select(Some(missing)).unwrap_err().to_string();
            assert!(err.contains(missing.name()), "{err}");
        }
    }
}
