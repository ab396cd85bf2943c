//! [`BlockVolume`]: the interface a front end (the NBD server) serves.
//!
//! The local extent store implements it today; the replicated volume client implements it later.
//! Implementations check ranges themselves, so a front end bug cannot reach past the end of a
//! volume.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A boxed future of a volume operation.
pub type VolFuture<T> = Pin<Box<dyn Future<Output = Result<T, VolumeError>> + Send + 'static>>;

/// What a volume operation can fail with. Each variant maps to one NBD error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VolumeError {
    #[error("range {offset}+{len} is outside the volume of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("request of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("checksum mismatch in volume {volume} at offset {offset}")]
    Checksum { volume: String, offset: u64 },
    #[error("fast zeroing is not possible for this range")]
    FastZeroUnsupported,
    #[error("volume is read-only")]
    ReadOnly,
    #[error("write payload does not match the crc32c it came with")]
    PayloadCrc,
    #[error("IO error: {0}")]
    Io(String),
}

impl VolumeError {
    /// The errno this error maps to on the wire (values are the NBD protocol's).
    pub fn errno(&self) -> u32 {
        match self {
            VolumeError::OutOfRange { .. } => libc::EINVAL as u32,
            VolumeError::TooLarge { .. } => libc::EOVERFLOW as u32,
            VolumeError::Checksum { .. } | VolumeError::PayloadCrc | VolumeError::Io(_) => {
                libc::EIO as u32
            }
            VolumeError::FastZeroUnsupported => libc::ENOTSUP as u32,
            VolumeError::ReadOnly => libc::EPERM as u32,
        }
    }
}

impl From<std::io::Error> for VolumeError {
    fn from(e: std::io::Error) -> Self {
        VolumeError::Io(e.to_string())
    }
}

/// Options of a write-zeroes request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// The range may be deallocated (NBD: `NBD_CMD_FLAG_NO_HOLE` not set).
    pub may_trim: bool,
    /// Durable before the reply (FUA).
    pub fua: bool,
    /// Fail with [`VolumeError::FastZeroUnsupported`] rather than write zeros slowly.
    pub fast: bool,
}

/// Allocation state of a range, as NBD's `base:allocation` context reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentState {
    /// Not allocated (thin).
    pub hole: bool,
    /// Reads as zeros.
    pub zero: bool,
}

/// A run of bytes with one allocation state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub state: ExtentState,
}

/// A block volume. All methods are safe to call concurrently; requests may complete in any order.
///
/// Durability contract: a write with `fua`, or any write that completed before a `flush` that
/// completed, survives a crash of the process (and of the machine, as far as the disk honours
/// flushes). `flush` is a barrier for every caller of this volume, whichever connection wrote.
pub trait BlockVolume: Send + Sync + 'static {
    /// The export name.
    fn name(&self) -> &str;

    /// Size in bytes.
    fn size(&self) -> u64;

    /// Largest read or write accepted, in bytes.
    fn max_io_bytes(&self) -> u32;

    /// Reads `len` bytes at `offset`; any alignment.
    fn read(&self, offset: u64, len: u32) -> VolFuture<Bytes>;

    /// Writes `data` at `offset`; any alignment.
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolFuture<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> VolFuture<()>;

    /// Discards `[offset, offset + len)`: it reads as zeros afterwards and frees space where
    /// whole blocks are covered.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> VolFuture<()>;

    /// Makes `[offset, offset + len)` read as zeros.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> VolFuture<()>;

    /// Allocation map of `[offset, offset + len)`: extents in order, together covering at least
    /// the first byte of the range and at most the whole range.
    fn block_status(&self, offset: u64, len: u64) -> VolFuture<Vec<Extent>>;
}
