//! The registered buffer pool of one ring.
//!
//! One aligned region is allocated when the disk starts and registered with the ring in equal
//! slices, so READ_FIXED / WRITE_FIXED skip the per-IO page pinning. Requests that do not fit a
//! slice, or arrive while every slice is busy, fall back to a private aligned buffer: the pool
//! is an accelerator, never a reason to wait.

use std::io;

use io_uring::IoUring;

use crate::io::portable::aligned::{AlignedBuf, BUFFER_ALIGN_BYTES};

/// Most buffers a pool may hold: the kernel registers at most 16 Ki buffers per ring
/// (`IORING_MAX_REG_BUFFERS`), which also keeps every index within the SQE's `u16`.
pub(super) const POOL_BUFFER_COUNT_MAX: usize = 16 * 1024;

const _: () = assert!(POOL_BUFFER_COUNT_MAX <= u16::MAX as usize + 1);

/// Index of one registered buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BufferIndex(pub(super) u16);

/// Equal, aligned slices of one registered region, handed out and taken back by index.
pub(super) struct BufferPool {
    /// Kept alive (and never moved: it is heap memory) for as long as the ring may touch it.
    region: AlignedBuf,
    buffer_size_bytes: usize,
    free: Vec<BufferIndex>,
    /// Per buffer, whether it is handed out; catches a double release.
    taken: Vec<bool>,
}

impl BufferPool {
    /// A pool with nothing in it, for when registration is not wanted or not possible.
    pub(super) fn empty() -> BufferPool {
        BufferPool {
            region: AlignedBuf::zeroed(0),
            buffer_size_bytes: 0,
            free: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// Allocates `count` buffers of `buffer_size_bytes` each and registers them with `ring`.
    ///
    /// The caller must keep the pool alive until the ring is dropped: the kernel holds the
    /// registered pages until then.
    pub(super) fn register(
        ring: &IoUring,
        count: usize,
        buffer_size_bytes: usize,
    ) -> io::Result<BufferPool> {
        assert!(count <= POOL_BUFFER_COUNT_MAX);
        assert!(buffer_size_bytes.is_multiple_of(BUFFER_ALIGN_BYTES));
        if count == 0 || buffer_size_bytes == 0 {
            return Ok(BufferPool::empty());
        }
        let region_bytes = count.checked_mul(buffer_size_bytes).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "buffer pool size overflows")
        })?;
        let mut region = AlignedBuf::zeroed(region_bytes);
        let base = region.as_mut_ptr();
        let iovecs: Vec<libc::iovec> = (0..count)
            .map(|index| libc::iovec {
                // SAFETY: `index * buffer_size_bytes` lies inside the region allocated above.
                iov_base: unsafe { base.add(index * buffer_size_bytes) }.cast(),
                iov_len: buffer_size_bytes,
            })
            .collect();
        // SAFETY: every iovec points into `region`, which the pool owns and keeps at a fixed
        // address; the caller keeps the pool alive until the ring is gone.
        unsafe { ring.submitter().register_buffers(&iovecs)? };
        let free = (0..count)
            .rev()
            .map(|index| BufferIndex(index as u16))
            .collect();
        Ok(BufferPool {
            region,
            buffer_size_bytes,
            free,
            taken: vec![false; count],
        })
    }

    /// A free buffer able to hold `len` bytes, if any.
    pub(super) fn take(&mut self, len: usize) -> Option<BufferIndex> {
        if len > self.buffer_size_bytes {
            return None;
        }
        let index = self.free.pop()?;
        let taken = &mut self.taken[usize::from(index.0)];
        assert!(!*taken, "buffer {index:?} handed out twice");
        *taken = true;
        Some(index)
    }

    /// Returns a buffer taken with [`BufferPool::take`].
    pub(super) fn release(&mut self, index: BufferIndex) {
        let taken = &mut self.taken[usize::from(index.0)];
        assert!(*taken, "buffer {index:?} released but not handed out");
        *taken = false;
        self.free.push(index);
    }

    /// Start of buffer `index`, for building an SQE.
    pub(super) fn ptr(&mut self, index: BufferIndex) -> *mut u8 {
        let start = usize::from(index.0) * self.buffer_size_bytes;
        assert!(start + self.buffer_size_bytes <= self.region.len());
        // SAFETY: in bounds of the region, checked above.
        unsafe { self.region.as_mut_ptr().add(start) }
    }

    /// The first `len` bytes of buffer `index`.
    pub(super) fn slice_mut(&mut self, index: BufferIndex, len: usize) -> &mut [u8] {
        assert!(len <= self.buffer_size_bytes);
        let start = self.ptr(index);
        // SAFETY: in bounds (checked in `ptr` and above), and only this buffer is borrowed:
        // a slice over the whole region would alias buffers the kernel is filling right now.
        unsafe { std::slice::from_raw_parts_mut(start, len) }
    }
}
