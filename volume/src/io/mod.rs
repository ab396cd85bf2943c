//! The disk seam: everything the extent store asks of a disk goes through [`Disk`] and
//! [`BlockFile`].
//!
//! Three implementations sit behind it and pass the same conformance suite
//! (`volume/tests/io_conformance.rs`):
//! - [`uring`]: the production engine, one io_uring per disk driven from the runtime, O_DIRECT,
//!   registered files and aligned registered buffers;
//! - [`portable`]: positional reads and writes on a blocking thread pool, for kernels without
//!   io_uring;
//! - [`sim`]: an in-memory disk that injects IO errors, torn writes and bit flips, and can
//!   "crash" (drop everything not yet made durable).
//!
//! Futures returned here are `'static` and `Send`: they own what they need, so callers may spawn
//! or join them freely. They are boxed so that the seam is object safe (`Arc<dyn Disk>`); the
//! allocation is noise next to a disk IO.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

pub mod portable;
pub mod sim;
pub mod small_file;
pub mod sparse;
pub mod uring;

/// Alignment, in bytes, of offsets and lengths on files opened with `direct: true`.
pub const DIRECT_ALIGN_BYTES: u64 = 4096;

/// Largest single read or write a backend must accept, in bytes.
pub const IO_SIZE_MAX_BYTES: usize = 32 * 1024 * 1024;

/// Largest record [`Disk::read_small`] and [`Disk::replace_durably`] handle, in bytes.
pub const SMALL_FILE_MAX_BYTES: usize = 1024 * 1024;

/// A boxed future of an IO result.
pub type IoFuture<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'static>>;

/// How to open a file on a [`Disk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    /// Create the file if it does not exist.
    pub create: bool,
    /// Bypass the page cache (O_DIRECT). Offsets and lengths of reads and writes must then be
    /// multiples of [`DIRECT_ALIGN_BYTES`]; a misaligned request fails with `InvalidInput`.
    pub direct: bool,
}

/// One disk: the unit that owns an IO engine (for io_uring, one ring and its thread).
pub trait Disk: Send + Sync {
    /// A short name for logs, e.g. `uring:/var/lib/fabric/disk0`.
    fn name(&self) -> &str;

    /// Opens `path` on this disk.
    fn open(&self, path: &Path, options: OpenOptions) -> io::Result<Arc<dyn BlockFile>>;

    /// Reads the whole of a small record file (at most [`SMALL_FILE_MAX_BYTES`]); `None` if
    /// it does not exist.
    fn read_small(&self, path: &Path) -> IoFuture<Option<Bytes>>;

    /// Replaces a small record file with `data`, atomically and durably: once the future
    /// resolves, the new content survives a crash; a crash before that leaves the old content
    /// or the new one, never a mix. The parent directory must exist.
    fn replace_durably(&self, path: &Path, data: Bytes) -> IoFuture<()>;

    /// Names the current boot of the machine the disk is in: it changes when the machine
    /// restarts (a power loss included), and only then. A process restart keeps it, as it keeps
    /// everything the kernel had accepted.
    fn boot_id(&self) -> io::Result<String> {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
        Ok(id.trim().to_owned())
    }
}

/// One open file on a [`Disk`]. Safe to use from many tasks at once; requests may complete in
/// any order.
pub trait BlockFile: Send + Sync {
    /// Reads exactly `len` bytes at `offset`. Holes and the range past the end of the file read
    /// as zeros.
    fn read_at(&self, offset: u64, len: usize) -> IoFuture<Bytes>;

    /// Writes all of `data` at `offset`, extending the file if needed. With `durable`, the
    /// future resolves only once these bytes (and the metadata needed to read them back) are
    /// on stable storage (FUA).
    fn write_at(&self, offset: u64, data: Bytes, durable: bool) -> IoFuture<()>;

    /// Makes every write that completed before this call durable (fdatasync).
    fn sync_data(&self) -> IoFuture<()>;

    /// Deallocates `[offset, offset + len)`: it reads as zeros afterwards and uses no space.
    /// The file length does not change.
    fn punch_hole(&self, offset: u64, len: u64) -> IoFuture<()>;

    /// Makes `[offset, offset + len)` read as zeros while keeping it allocated.
    /// The file length does not change.
    fn zero_range(&self, offset: u64, len: u64) -> IoFuture<()>;

    /// The first offset `>= offset` that holds data (SEEK_DATA), or `None` if only holes
    /// follow up to the end of the file. Backends may report a hole as data, never data as a hole.
    fn seek_data(&self, offset: u64) -> IoFuture<Option<u64>>;

    /// The first offset `>= offset` that starts a hole (SEEK_HOLE); the end of the file counts
    /// as a hole. Requires `offset` < file length.
    fn seek_hole(&self, offset: u64) -> IoFuture<u64>;

    /// Sets the file length (thin: growing allocates nothing).
    fn set_len(&self, len: u64) -> IoFuture<()>;

    /// The current file length.
    fn file_len(&self) -> IoFuture<u64>;
}
