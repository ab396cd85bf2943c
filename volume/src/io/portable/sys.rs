//! What both real backends share: opening files, checking requests against the seam's
//! contract, and thin safe wrappers over the Linux calls that `std` does not expose
//! (`fallocate`, `lseek(SEEK_DATA / SEEK_HOLE)`, `fdatasync`).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::io::{DIRECT_ALIGN_BYTES, IO_SIZE_MAX_BYTES, OpenOptions};

/// `fallocate` mode that deallocates a range and keeps the file length.
pub(crate) const MODE_PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

/// `fallocate` mode that zeroes a range, keeps it allocated and keeps the file length.
pub(crate) const MODE_ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// How many times a read or write that made no progress is retried before it fails. Only
/// O_DIRECT realignment and `EAGAIN` make no progress; neither should repeat.
pub(crate) const STALLED_RETRIES_MAX: u32 = 8;

/// Opens `path` read-write, with O_DIRECT when asked and O_CLOEXEC always (std's default).
pub(crate) fn open_file(path: &Path, options: OpenOptions) -> io::Result<File> {
    let OpenOptions { create, direct } = options;
    let mut open = std::fs::OpenOptions::new();
    open.read(true).write(true).create(create);
    if direct {
        open.custom_flags(libc::O_DIRECT);
    }
    open.open(path)
}

/// Checks a read or write of `len` bytes at `offset` against the seam's limits.
///
/// Fails with `InvalidInput` when the request is larger than [`IO_SIZE_MAX_BYTES`], ends past
/// the largest offset the kernel accepts, or, on a direct file, is not aligned to
/// [`DIRECT_ALIGN_BYTES`].
pub(crate) fn check_rw(direct: bool, offset: u64, len: usize) -> io::Result<()> {
    if len > IO_SIZE_MAX_BYTES {
        return Err(invalid(format!(
            "request of {len} bytes exceeds io_size_max of {IO_SIZE_MAX_BYTES} bytes"
        )));
    }
    check_range(offset, len as u64)?;
    if direct
        && !(offset.is_multiple_of(DIRECT_ALIGN_BYTES)
            && (len as u64).is_multiple_of(DIRECT_ALIGN_BYTES))
    {
        return Err(invalid(format!(
            "direct IO at offset {offset} of {len} bytes is not aligned to {DIRECT_ALIGN_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Checks that `[offset, offset + len)` fits in the kernel's signed file offsets.
pub(crate) fn check_range(offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= i64::MAX as u64 => Ok(()),
        _ => Err(invalid(format!(
            "range at {offset} of {len} bytes overflows the file offset"
        ))),
    }
}

/// An `InvalidInput` error with `message`.
pub(crate) fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Returns `-1` results of a libc call as the thread's `errno`.
fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `fallocate(fd, mode, offset, len)`.
pub(crate) fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    check_range(offset, len)?;
    // SAFETY: plain syscall on a live descriptor; the range was checked to fit in `off_t`.
    check(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
}

/// `fdatasync(fd)`.
pub(crate) fn fdatasync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a live descriptor.
    check(unsafe { libc::fdatasync(fd.as_raw_fd()) })
}

/// `ftruncate(fd, len)`.
pub(crate) fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    check_range(0, len)?;
    // SAFETY: plain syscall on a live descriptor; `len` fits in `off_t`.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })
}

/// The file length from `fstat`.
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fstat` fills `stat` when it returns 0.
    check(unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful `fstat` above.
    let size = unsafe { stat.assume_init() }.st_size;
    u64::try_from(size)
        .map_err(|_| io::Error::other(format!("fstat reported a negative size {size}")))
}

/// `lseek(fd, offset, whence)`; `Ok(None)` when the kernel answers `ENXIO` (no data, or `offset`
/// at or past the end of the file).
fn lseek(fd: BorrowedFd<'_>, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    check_range(offset, 0)?;
    // SAFETY: plain syscall on a live descriptor; `offset` fits in `off_t`.
    let found = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
    if found == -1 {
        let error = io::Error::last_os_error();
        return if error.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(error)
        };
    }
    u64::try_from(found)
        .map(Some)
        .map_err(|_| io::Error::other(format!("lseek returned a negative offset {found}")))
}

/// The seam's `seek_data`: the first offset `>= offset` holding data, `None` if only holes
/// follow.
pub(crate) fn seek_data(fd: BorrowedFd<'_>, offset: u64) -> io::Result<Option<u64>> {
    lseek(fd, offset, libc::SEEK_DATA)
}

/// The seam's `seek_hole`: the first offset `>= offset` starting a hole. At or past the end of
/// the file everything is hole, so `offset` itself is returned there.
pub(crate) fn seek_hole(fd: BorrowedFd<'_>, offset: u64) -> io::Result<u64> {
    Ok(lseek(fd, offset, libc::SEEK_HOLE)?.unwrap_or(offset))
}

/// Where a read that stopped short of its length goes next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterShortRead {
    /// The end of the file was reached: the rest of the buffer reads as zeros.
    EndOfFile,
    /// Continue reading at this many bytes into the request.
    ResumeAt(usize),
}

/// Decides how to continue a read at `offset` that has `done` bytes so far.
///
/// A buffered read resumes where it stopped. A direct read that stopped mid-block can only
/// resume on a block boundary; it stops mid-block at the end of the file, which `file_len`
/// (called only in that case) confirms, and otherwise re-reads from the block start.
pub(crate) fn after_short_read(
    direct: bool,
    offset: u64,
    done: usize,
    file_len: impl FnOnce() -> io::Result<u64>,
) -> io::Result<AfterShortRead> {
    if !direct || (done as u64).is_multiple_of(DIRECT_ALIGN_BYTES) {
        return Ok(AfterShortRead::ResumeAt(done));
    }
    if offset + done as u64 >= file_len()? {
        return Ok(AfterShortRead::EndOfFile);
    }
    Ok(AfterShortRead::ResumeAt(
        done - done % DIRECT_ALIGN_BYTES as usize,
    ))
}

/// Where a write that stopped short continues: a direct write only on a block boundary, which
/// rewrites the tail of the last block with the same bytes.
pub(crate) fn resume_short_write(direct: bool, done: usize) -> usize {
    if direct {
        done - done % DIRECT_ALIGN_BYTES as usize
    } else {
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_requests_must_be_aligned_and_bounded() {
        assert!(check_rw(true, 4096, 8192).is_ok());
        assert!(check_rw(false, 1, 3).is_ok());
        for (offset, len) in [(512, 4096), (0, 100), (4095, 4096)] {
            let error = check_rw(true, offset, len).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        }
        assert!(check_rw(false, 0, IO_SIZE_MAX_BYTES + 1).is_err());
        assert!(check_rw(false, u64::MAX, 1).is_err());
    }

    #[test]
    fn short_direct_read_resumes_on_a_block_boundary_unless_at_the_end() {
        let len_10000 = || Ok(10_000);
        assert_eq!(
            after_short_read(false, 0, 100, len_10000).unwrap(),
            AfterShortRead::ResumeAt(100)
        );
        assert_eq!(
            after_short_read(true, 0, 8192, len_10000).unwrap(),
            AfterShortRead::ResumeAt(8192)
        );
        assert_eq!(
            after_short_read(true, 0, 5000, len_10000).unwrap(),
            AfterShortRead::ResumeAt(4096)
        );
        assert_eq!(
            after_short_read(true, 8192, 1808, len_10000).unwrap(),
            AfterShortRead::EndOfFile
        );
    }
}
