//! The production backend: one io_uring per disk, driven from the tokio runtime.
//!
//! A caller starts its request on the ring from its own thread (`engine`, behind a lock) and
//! awaits the answer on a tokio oneshot. The disk's reaper task (`reaper`) is woken by the
//! runtime's reactor when the kernel signals a completion and sends the answers, so IO and
//! sockets share one event loop and a depth-1 IO never crosses threads.
//!
//! What the engine uses of io_uring, and why:
//! - registered (fixed) files: the kernel skips the fd table lookup and reference counting on
//!   every IO; a slot stays registered until the last request of its file has finished, so a
//!   slot is never reused under a request in flight;
//! - a pool of 4 KiB-aligned registered buffers allocated up front (`pool`) for
//!   READ_FIXED / WRITE_FIXED, with a private aligned buffer and plain READ / WRITE when the
//!   pool is busy or the IO is larger than a pool buffer;
//! - O_DIRECT when a file is opened `direct`;
//! - durable writes carry `RWF_DSYNC`: the write and its flush are one request, so a short
//!   write that is resubmitted keeps its FUA semantics (a linked fdatasync would be cancelled
//!   by the short write and would have to be rebuilt);
//! - `fallocate` for punch-hole and zero-range, `fsync(DATASYNC)` for `sync_data`.
//!
//! Metadata calls (`len`, `seek_data`, `seek_hole`, `set_len`) are plain syscalls on the
//! caller's side: they are rare, they do not move data, and `lseek` has no ring opcode.
//!
//! Limits: at most [`UringConfig::queue_depth_max`] requests are in the ring, at most
//! [`UringConfig::requests_queued_max`] are accepted and not yet answered (callers beyond that
//! wait asynchronously for room), and at most [`UringConfig::files_open_max`] files are open.
//!
//! A disk must be created inside a tokio runtime, which then serves its completions. The ring
//! is closed once the [`UringDisk`], every file opened on it and every request are gone.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{Semaphore, oneshot};

use super::portable::sys;
use super::{BlockFile, Disk, IO_SIZE_MAX_BYTES, IoFuture, OpenOptions};

mod engine;
mod link;
mod pool;
mod reaper;

use link::{Request, RequestKind};
use reaper::Shared;

/// Largest ring this backend asks for, in requests.
pub const QUEUE_DEPTH_LIMIT: u32 = 4096;

/// Most requests one disk accepts before callers wait, in requests.
pub const REQUESTS_QUEUED_LIMIT: usize = 1 << 20;

/// Largest registered file table, in files.
pub const FILES_OPEN_LIMIT: u32 = 32_768;

/// Sizes of one disk's engine. Every field is a hard bound, enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringConfig {
    /// Requests in the ring at once (1 ..= [`QUEUE_DEPTH_LIMIT`]).
    pub queue_depth_max: u32,
    /// Requests accepted and not yet answered, queued ones included
    /// (`queue_depth_max ..=` [`REQUESTS_QUEUED_LIMIT`]). Callers past this bound wait for room.
    pub requests_queued_max: usize,
    /// Files open on the disk at once (1 ..= [`FILES_OPEN_LIMIT`]).
    pub files_open_max: u32,
    /// Registered buffers allocated up front; 0 disables the pool.
    pub pool_buffer_count: usize,
    /// Size of each registered buffer, a multiple of 4 KiB, at most [`IO_SIZE_MAX_BYTES`].
    pub pool_buffer_size_bytes: usize,
}

impl Default for UringConfig {
    /// 128 requests in the ring and a pool of 64 × 128 KiB (8 MiB) per disk: enough to keep
    /// an NVMe device busy with extent-sized IO without pinning much memory.
    fn default() -> UringConfig {
        UringConfig {
            queue_depth_max: 128,
            requests_queued_max: 1024,
            files_open_max: 256,
            pool_buffer_count: 64,
            pool_buffer_size_bytes: 128 * 1024,
        }
    }
}

impl UringConfig {
    fn validate(&self) -> io::Result<()> {
        let UringConfig {
            queue_depth_max,
            requests_queued_max,
            files_open_max,
            pool_buffer_count,
            pool_buffer_size_bytes,
        } = *self;
        let problem = if !(1..=QUEUE_DEPTH_LIMIT).contains(&queue_depth_max) {
            Some(format!(
                "queue_depth_max {queue_depth_max} is outside 1..={QUEUE_DEPTH_LIMIT}"
            ))
        } else if requests_queued_max > REQUESTS_QUEUED_LIMIT {
            Some(format!(
                "requests_queued_max {requests_queued_max} exceeds {REQUESTS_QUEUED_LIMIT}"
            ))
        } else if requests_queued_max < queue_depth_max as usize {
            Some(format!(
                "requests_queued_max {requests_queued_max} is below queue_depth_max"
            ))
        } else if !(1..=FILES_OPEN_LIMIT).contains(&files_open_max) {
            Some(format!(
                "files_open_max {files_open_max} is outside 1..={FILES_OPEN_LIMIT}"
            ))
        } else if pool_buffer_count > pool::POOL_BUFFER_COUNT_MAX {
            Some(format!(
                "pool_buffer_count {pool_buffer_count} exceeds {}",
                pool::POOL_BUFFER_COUNT_MAX
            ))
        } else if !pool_buffer_size_bytes.is_multiple_of(4096)
            || pool_buffer_size_bytes > IO_SIZE_MAX_BYTES
        {
            Some(format!(
                "pool_buffer_size_bytes {pool_buffer_size_bytes} is not a multiple of 4 KiB up to io_size_max"
            ))
        } else {
            None
        };
        match problem {
            Some(problem) => Err(sys::invalid(format!("uring config: {problem}"))),
            None => Ok(()),
        }
    }
}

/// A disk served by one io_uring.
pub struct UringDisk {
    name: String,
    handle: Arc<Handle>,
}

impl UringDisk {
    /// [`UringDisk::with_config`] with [`UringConfig::default`].
    pub fn new(name: &str) -> io::Result<UringDisk> {
        UringDisk::with_config(name, UringConfig::default())
    }

    /// Starts the engine of disk `name`: creates the ring, registers the file table and the
    /// buffer pool, and spawns its reaper on the current tokio runtime. Fails outside a
    /// runtime, if the kernel refuses io_uring (then use [`super::portable`]), or if `config`
    /// is out of bounds. A pool the kernel refuses to register
    /// (locked-memory limit) is logged and replaced by per-request buffers.
    pub fn with_config(name: &str, config: UringConfig) -> io::Result<UringDisk> {
        config.validate()?;
        let name = format!("uring:{name}");
        let shared = Shared::start(&name, config)?;
        let admission = Arc::new(Semaphore::new(config.requests_queued_max));
        Ok(UringDisk {
            name,
            handle: Arc::new(Handle { shared, admission }),
        })
    }

    /// A probe that tells when the ring has been closed.
    pub fn ring_probe(&self) -> RingProbe {
        RingProbe(Arc::downgrade(&self.handle.shared))
    }

    /// What the engine has done so far.
    pub fn stats(&self) -> UringStats {
        let counters = &self.handle.shared.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        UringStats {
            pool_buffer_ios: read(&counters.pool_buffer_ios),
            own_buffer_ios: read(&counters.own_buffer_ios),
            resubmits: read(&counters.resubmits),
            requests_answered: read(&counters.requests_answered),
        }
    }
}

/// Tells whether a disk's ring is still open, without keeping it open.
pub struct RingProbe(std::sync::Weak<Shared>);

impl RingProbe {
    /// True until the engine, and with it the ring, has been dropped.
    pub fn is_open(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// Counters of one disk's engine, for tests, benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UringStats {
    /// Reads and writes that went through a registered pool buffer (READ_FIXED / WRITE_FIXED).
    pub pool_buffer_ios: u64,
    /// Reads and writes that used their own aligned buffer or the caller's memory, because the
    /// pool was busy or the IO larger than a pool buffer.
    pub own_buffer_ios: u64,
    /// Completions that led to another submission: the rest of a short read or write, or a
    /// retry after `EAGAIN`.
    pub resubmits: u64,
    /// Requests answered, successfully or not.
    pub requests_answered: u64,
}

impl Disk for UringDisk {
    fn name(&self) -> &str {
        &self.name
    }

    /// Opens the file and registers it with the ring.
    fn open(&self, path: &Path, options: OpenOptions) -> io::Result<Arc<dyn BlockFile>> {
        let fd = OwnedFd::from(sys::open_file(path, options)?);
        let slot = self
            .handle
            .shared
            .with_engine(|engine| engine.register_file(fd.as_raw_fd()))?;
        let file = FileSlot {
            handle: Arc::clone(&self.handle),
            slot,
            fd,
        };
        Ok(Arc::new(UringFile {
            file: Arc::new(file),
            direct: options.direct,
        }))
    }

    fn read_small(&self, path: &Path) -> IoFuture<Option<Bytes>> {
        super::small_file::read_async(path)
    }

    fn replace_durably(&self, path: &Path, data: Bytes) -> IoFuture<()> {
        super::small_file::replace_async(path, data)
    }
}

/// The callers' side of one engine. Dropping the last one stops the engine.
struct Handle {
    shared: Arc<Shared>,
    /// Bounds requests accepted and not yet answered; a permit travels with each request.
    admission: Arc<Semaphore>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Every request holds a handle through its file, so none is in flight: the reaper
        // may exit, and the ring closes with the last reference to the engine.
        self.shared.stop();
    }
}

/// A file registered in one slot of the ring's file table.
///
/// Every request holds an `Arc` to it until answered, so the slot is released (on the last
/// drop) only once no request can use it any more.
pub(super) struct FileSlot {
    handle: Arc<Handle>,
    /// Index in the ring's registered file table.
    pub(super) slot: u32,
    /// The descriptor itself, for metadata calls; the ring holds its own reference to the file
    /// through the slot.
    pub(super) fd: OwnedFd,
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        let slot = self.slot;
        self.handle
            .shared
            .with_engine(|engine| engine.unregister_file(slot));
    }
}

/// Largest buffered, non-durable write done on the caller's thread instead of the ring.
pub const INLINE_WRITE_MAX_BYTES: usize = 4096;

fn pwrite_all(fd: BorrowedFd<'_>, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is a live slice for the duration of the call; the fd is borrowed.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwrite wrote nothing",
            ));
        }
        data = &data[n as usize..];
        offset += n as u64;
    }
    Ok(())
}

/// One open file of a [`UringDisk`].
struct UringFile {
    file: Arc<FileSlot>,
    direct: bool,
}

impl UringFile {
    /// Starts `kind` on the ring once admitted and waits for its answer on `answer`.
    fn submit<T: Send + 'static>(
        &self,
        kind: RequestKind,
        answer: oneshot::Receiver<io::Result<T>>,
    ) -> IoFuture<T> {
        let file = Arc::clone(&self.file);
        let direct = self.direct;
        Box::pin(async move {
            let admission = Arc::clone(&file.handle.admission);
            let permit = admission
                .acquire_owned()
                .await
                .map_err(|_| engine_stopped())?;
            let handle = Arc::clone(&file.handle);
            handle.shared.accept(Request {
                file,
                direct,
                kind,
                _permit: permit,
            })?;
            answer.await.map_err(|_| engine_stopped())?
        })
    }
}

impl BlockFile for UringFile {
    fn read_at(&self, offset: u64, len: usize) -> IoFuture<Bytes> {
        if let Err(error) = sys::check_rw(self.direct, offset, len) {
            return Box::pin(std::future::ready(Err(error)));
        }
        if len == 0 {
            return Box::pin(std::future::ready(Ok(Bytes::new())));
        }
        let (reply, answer) = oneshot::channel();
        self.submit(RequestKind::Read { offset, len, reply }, answer)
    }

    fn write_at(&self, offset: u64, data: Bytes, durable: bool) -> IoFuture<()> {
        if let Err(error) = sys::check_rw(self.direct, offset, data.len()) {
            return Box::pin(std::future::ready(Err(error)));
        }
        if data.is_empty() {
            return Box::pin(std::future::ready(Ok(())));
        }
        if !self.direct && !durable && data.len() <= INLINE_WRITE_MAX_BYTES {
            // A small buffered write is a copy into the page cache: cheaper done here than a
            // trip through the ring and the reaper (the store's checksum entries are such
            // writes, one before every data write).
            let result = pwrite_all(self.file.fd.as_fd(), &data, offset);
            return Box::pin(std::future::ready(result));
        }
        let (reply, answer) = oneshot::channel();
        self.submit(
            RequestKind::Write {
                offset,
                data,
                durable,
                reply,
            },
            answer,
        )
    }

    fn sync_data(&self) -> IoFuture<()> {
        let (reply, answer) = oneshot::channel();
        self.submit(RequestKind::Sync { reply }, answer)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> IoFuture<()> {
        self.fallocate(sys::MODE_PUNCH_HOLE, offset, len)
    }

    fn zero_range(&self, offset: u64, len: u64) -> IoFuture<()> {
        self.fallocate(sys::MODE_ZERO_RANGE, offset, len)
    }

    fn seek_data(&self, offset: u64) -> IoFuture<Option<u64>> {
        let file = Arc::clone(&self.file);
        Box::pin(async move { sys::seek_data(file.fd.as_fd(), offset) })
    }

    fn seek_hole(&self, offset: u64) -> IoFuture<u64> {
        let file = Arc::clone(&self.file);
        Box::pin(async move { sys::seek_hole(file.fd.as_fd(), offset) })
    }

    fn set_len(&self, len: u64) -> IoFuture<()> {
        let file = Arc::clone(&self.file);
        Box::pin(async move {
            // Shrinking a large file frees its extents, which can take a while: keep that off
            // the async workers when there is a runtime to hand it to.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => runtime
                    .spawn_blocking(move || sys::ftruncate(file.fd.as_fd(), len))
                    .await
                    .map_err(|error| io::Error::other(format!("set_len task failed: {error}")))?,
                Err(_) => sys::ftruncate(file.fd.as_fd(), len),
            }
        })
    }

    fn file_len(&self) -> IoFuture<u64> {
        let file = Arc::clone(&self.file);
        Box::pin(async move { sys::file_len(file.fd.as_fd()) })
    }
}

impl UringFile {
    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> IoFuture<()> {
        if let Err(error) = sys::check_range(offset, len) {
            return Box::pin(std::future::ready(Err(error)));
        }
        if len == 0 {
            // fallocate refuses an empty range; there is nothing to do.
            return Box::pin(std::future::ready(Ok(())));
        }
        let (reply, answer) = oneshot::channel();
        self.submit(
            RequestKind::Fallocate {
                mode,
                offset,
                len,
                reply,
            },
            answer,
        )
    }
}

/// The error every caller sees once the engine is gone.
fn engine_stopped() -> io::Error {
    io::Error::other("io_uring engine has stopped (its tokio runtime shut down)")
}
