//! The portable backend: positional reads and writes (`pread` / `pwrite`) on tokio's blocking
//! thread pool, for kernels where io_uring is missing or disabled.
//!
//! It keeps the seam's full contract, O_DIRECT included, so it is a real alternative to
//! [`super::uring`] rather than a toy. Its submodules also hold what both real backends share:
//! `aligned` buffers and the `sys` calls.
//!
//! Every request takes a permit from a per-disk semaphore before it reaches the pool, which
//! bounds how many blocking threads one disk can occupy ([`PortableDisk::inflight_max`]).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::{BlockFile, Disk, IoFuture, OpenOptions};

pub(crate) mod aligned;
pub(crate) mod sys;

use aligned::AlignedBuf;
use sys::{AfterShortRead, STALLED_RETRIES_MAX};

/// Default bound on the requests of one disk running at once.
pub const INFLIGHT_MAX_DEFAULT: usize = 64;

/// Largest accepted bound on requests running at once: each one may hold a blocking thread.
pub const INFLIGHT_LIMIT: usize = 4096;

/// A disk served by positional IO on tokio's blocking pool.
///
/// Requests must be polled inside a tokio runtime (they use `spawn_blocking`).
pub struct PortableDisk {
    name: String,
    inflight: Arc<Semaphore>,
    inflight_max: usize,
}

impl PortableDisk {
    /// A disk named `name` running at most [`INFLIGHT_MAX_DEFAULT`] requests at once.
    pub fn new(name: &str) -> PortableDisk {
        PortableDisk::with_inflight_max(name, INFLIGHT_MAX_DEFAULT)
    }

    /// A disk named `name` running at most `inflight_max` (1 ..= [`INFLIGHT_LIMIT`]) requests
    /// at once.
    pub fn with_inflight_max(name: &str, inflight_max: usize) -> PortableDisk {
        assert!(
            (1..=INFLIGHT_LIMIT).contains(&inflight_max),
            "inflight_max {inflight_max} is outside 1..={INFLIGHT_LIMIT}"
        );
        PortableDisk {
            name: format!("portable:{name}"),
            inflight: Arc::new(Semaphore::new(inflight_max)),
            inflight_max,
        }
    }

    /// The bound on requests running at once.
    pub fn inflight_max(&self) -> usize {
        self.inflight_max
    }
}

impl Disk for PortableDisk {
    fn name(&self) -> &str {
        &self.name
    }

    fn open(&self, path: &Path, options: OpenOptions) -> io::Result<Arc<dyn BlockFile>> {
        let file = sys::open_file(path, options)?;
        Ok(Arc::new(PortableFile {
            file: Arc::new(file),
            direct: options.direct,
            inflight: Arc::clone(&self.inflight),
        }))
    }

    fn read_small(&self, path: &Path) -> IoFuture<Option<Bytes>> {
        super::small_file::read_async(path)
    }

    fn replace_durably(&self, path: &Path, data: Bytes) -> IoFuture<()> {
        super::small_file::replace_async(path, data)
    }
}

/// One open file of a [`PortableDisk`].
struct PortableFile {
    file: Arc<File>,
    direct: bool,
    inflight: Arc<Semaphore>,
}

impl PortableFile {
    /// Runs `work` on the blocking pool once a permit of the disk is free.
    fn run<T, F>(&self, work: F) -> IoFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&File) -> io::Result<T> + Send + 'static,
    {
        let file = Arc::clone(&self.file);
        let inflight = Arc::clone(&self.inflight);
        Box::pin(async move {
            let _permit = inflight
                .acquire_owned()
                .await
                .map_err(|_| io::Error::other("portable disk: request admission closed"))?;
            tokio::task::spawn_blocking(move || work(&file))
                .await
                .map_err(|error| {
                    io::Error::other(format!("portable disk: IO task failed: {error}"))
                })?
        })
    }
}

impl BlockFile for PortableFile {
    fn read_at(&self, offset: u64, len: usize) -> IoFuture<Bytes> {
        if let Err(error) = sys::check_rw(self.direct, offset, len) {
            return Box::pin(std::future::ready(Err(error)));
        }
        if len == 0 {
            return Box::pin(std::future::ready(Ok(Bytes::new())));
        }
        let direct = self.direct;
        self.run(move |file| read_full(file, direct, offset, len))
    }

    fn write_at(&self, offset: u64, data: Bytes, durable: bool) -> IoFuture<()> {
        if let Err(error) = sys::check_rw(self.direct, offset, data.len()) {
            return Box::pin(std::future::ready(Err(error)));
        }
        if data.is_empty() {
            return Box::pin(std::future::ready(Ok(())));
        }
        let direct = self.direct;
        self.run(move |file| {
            write_full(file, direct, offset, &data)?;
            if durable {
                // A superset of FUA: every completed write of the file becomes durable.
                sys::fdatasync(file.as_fd())?;
            }
            Ok(())
        })
    }

    fn sync_data(&self) -> IoFuture<()> {
        self.run(|file| sys::fdatasync(file.as_fd()))
    }

    fn punch_hole(&self, offset: u64, len: u64) -> IoFuture<()> {
        if len == 0 {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.run(move |file| sys::fallocate(file.as_fd(), sys::MODE_PUNCH_HOLE, offset, len))
    }

    fn zero_range(&self, offset: u64, len: u64) -> IoFuture<()> {
        if len == 0 {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.run(move |file| sys::fallocate(file.as_fd(), sys::MODE_ZERO_RANGE, offset, len))
    }

    fn seek_data(&self, offset: u64) -> IoFuture<Option<u64>> {
        self.run(move |file| sys::seek_data(file.as_fd(), offset))
    }

    fn seek_hole(&self, offset: u64) -> IoFuture<u64> {
        self.run(move |file| sys::seek_hole(file.as_fd(), offset))
    }

    fn set_len(&self, len: u64) -> IoFuture<()> {
        self.run(move |file| sys::ftruncate(file.as_fd(), len))
    }

    fn file_len(&self) -> IoFuture<u64> {
        self.run(|file| sys::file_len(file.as_fd()))
    }
}

/// Reads `len` bytes at `offset`, zero-filling past the end of the file.
fn read_full(file: &File, direct: bool, offset: u64, len: usize) -> io::Result<Bytes> {
    // What the kernel does not fill (past the end of the file) is zeroed at the end.
    let mut buf = AlignedBuf::for_overwrite(len);
    let mut done = 0;
    let mut stalled = 0;
    while done < len {
        match file.read_at(&mut buf.as_mut_slice()[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(read) => {
                let reached = done + read;
                match sys::after_short_read(direct, offset, reached, || {
                    sys::file_len(file.as_fd())
                })? {
                    AfterShortRead::EndOfFile => {
                        done = reached;
                        break;
                    }
                    AfterShortRead::ResumeAt(resume) => {
                        stalled = if resume > done { 0 } else { stalled + 1 };
                        done = resume;
                    }
                }
            }
            Err(error) if is_retryable(&error) => stalled += 1,
            Err(error) => return Err(error),
        }
        if stalled > STALLED_RETRIES_MAX {
            return Err(io::Error::other(format!(
                "read at {offset} made no progress after {STALLED_RETRIES_MAX} retries"
            )));
        }
    }
    // A direct re-read may have stopped short of bytes an earlier attempt filled; what lies past
    // the end of the file must read as zeros.
    buf.as_mut_slice()[done..].fill(0);
    Ok(buf.into_bytes())
}

/// Writes all of `data` at `offset`, going through an aligned copy when O_DIRECT needs one.
fn write_full(file: &File, direct: bool, offset: u64, data: &Bytes) -> io::Result<()> {
    let copy;
    let source: &[u8] = if direct && !aligned::is_aligned(data) {
        copy = AlignedBuf::copy_of(data);
        copy.as_slice()
    } else {
        data
    };
    let mut done = 0;
    let mut stalled = 0;
    while done < source.len() {
        match file.write_at(&source[done..], offset + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("write at {} accepted no bytes", offset + done as u64),
                ));
            }
            Ok(written) => {
                let resume = sys::resume_short_write(direct, done + written);
                stalled = if resume > done { 0 } else { stalled + 1 };
                done = resume;
            }
            Err(error) if is_retryable(&error) => stalled += 1,
            Err(error) => return Err(error),
        }
        if stalled > STALLED_RETRIES_MAX {
            return Err(io::Error::other(format!(
                "write at {offset} made no progress after {STALLED_RETRIES_MAX} retries"
            )));
        }
    }
    Ok(())
}

/// Errors after which the same call may simply be made again.
fn is_retryable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}
