//! Heap buffers aligned for O_DIRECT.
//!
//! O_DIRECT requires the memory address, the file offset and the length of every transfer to be
//! aligned to the logical block size. `Vec<u8>` and `Bytes` give no alignment guarantee, so both
//! real backends read into (and, when needed, copy writes through) an [`AlignedBuf`].
//!
//! Large buffers (64 KiB to 4 MiB, the sizes of extent copies and big client IOs) are kept for
//! reuse in a process-wide cache when they are dropped. Allocating a fresh 4 MiB buffer costs a
//! `mmap`, a page fault per 4 KiB page and the zeroing of every page, then a `munmap` when it
//! is freed: a rebuild spent about a fifth of its CPU time on that (BENCHMARKS.md).

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::Mutex;

use bytes::Bytes;

use crate::io::DIRECT_ALIGN_BYTES;

/// Alignment of every [`AlignedBuf`], in bytes.
pub(crate) const BUFFER_ALIGN_BYTES: usize = DIRECT_ALIGN_BYTES as usize;

/// A zero-initialised heap buffer whose start is aligned to [`BUFFER_ALIGN_BYTES`].
///
/// The allocation is rounded up to a whole number of alignment units (at least one), so a
/// direct transfer may always cover the last partial unit; [`AlignedBuf::len`] is the length
/// the caller asked for.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: `AlignedBuf` uniquely owns its allocation, like a `Box<[u8]>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes. Aborts on allocation failure, like `Vec`.
    pub(crate) fn zeroed(len: usize) -> AlignedBuf {
        let (mut buf, reused) = AlignedBuf::allocate(len);
        if reused {
            buf.as_mut_slice().fill(0);
        }
        buf
    }

    /// Allocates `len` bytes whose contents are unspecified: zeros, or what an earlier buffer
    /// held. The caller overwrites all `len` of them before anybody reads them (a read fills
    /// the buffer, a copy covers it). Aborts on allocation failure, like `Vec`.
    pub(crate) fn for_overwrite(len: usize) -> AlignedBuf {
        AlignedBuf::allocate(len).0
    }

    /// A buffer of `len` bytes and whether it was reused from the cache (else it is zeroed).
    fn allocate(len: usize) -> (AlignedBuf, bool) {
        let size_bytes = size_class(len).unwrap_or_else(|| {
            len.max(1)
                .checked_next_multiple_of(BUFFER_ALIGN_BYTES)
                .expect("buffer length overflows usize")
        });
        let layout = Layout::from_size_align(size_bytes, BUFFER_ALIGN_BYTES)
            .expect("aligned buffer layout is valid");
        if let Some(ptr) = CACHE.take(size_bytes) {
            return (AlignedBuf { ptr, len, layout }, true);
        }
        // Zeroed, so that every byte of the allocation is initialised memory from here on,
        // including when it is reused.
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        assert!(ptr.as_ptr().addr().is_multiple_of(BUFFER_ALIGN_BYTES));
        (AlignedBuf { ptr, len, layout }, false)
    }

    /// A copy of `data` in aligned memory.
    pub(crate) fn copy_of(data: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::for_overwrite(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        buf
    }

    /// Whether this buffer is of a size the cache keeps.
    fn cacheable(&self) -> bool {
        size_class(self.len) == Some(self.layout.size())
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: the allocation holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Hands the buffer to `Bytes` without copying it.
    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cacheable() && CACHE.put(self.ptr, self.layout.size()) {
            return;
        }
        // SAFETY: allocated in `allocate` with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Smallest buffer the cache keeps, in bytes: below it `malloc` serves from its own free
/// lists without touching the kernel.
const CACHED_MIN_BYTES: usize = 64 * 1024;
/// Largest buffer the cache keeps, in bytes: one extent, the largest payload of any frame.
const CACHED_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes the cache keeps idle across all sizes: 32 extent-sized buffers, two per extent
/// copy the rebuild keeps in flight.
const CACHE_IDLE_BYTES_MAX: usize = 128 * 1024 * 1024;
/// Sizes the cache keeps: the powers of two from `CACHED_MIN_BYTES` to `CACHED_MAX_BYTES`.
const SIZE_CLASSES: usize =
    (CACHED_MAX_BYTES.trailing_zeros() - CACHED_MIN_BYTES.trailing_zeros()) as usize + 1;

const _: () = assert!(CACHED_MIN_BYTES.is_power_of_two() && CACHED_MAX_BYTES.is_power_of_two());
const _: () = assert!(CACHED_MIN_BYTES.is_multiple_of(BUFFER_ALIGN_BYTES));
const _: () = assert!(CACHE_IDLE_BYTES_MAX >= CACHED_MAX_BYTES);

/// The allocation size of a cached buffer of `len` bytes (`len` rounded up to a power of
/// two), or `None` when buffers of that length are not cached.
fn size_class(len: usize) -> Option<usize> {
    (CACHED_MIN_BYTES / 2 < len && len <= CACHED_MAX_BYTES)
        .then(|| len.next_power_of_two().max(CACHED_MIN_BYTES))
}

fn class_index(size_bytes: usize) -> usize {
    (size_bytes.trailing_zeros() - CACHED_MIN_BYTES.trailing_zeros()) as usize
}

/// An idle cached allocation.
struct Idle(NonNull<u8>);

// SAFETY: an idle allocation is owned by the cache alone.
unsafe impl Send for Idle {}

struct Cache {
    idle: Mutex<CacheLists>,
}

struct CacheLists {
    /// Idle allocations per size class.
    free: [Vec<Idle>; SIZE_CLASSES],
    idle_bytes: usize,
}

static CACHE: Cache = Cache {
    idle: Mutex::new(CacheLists {
        free: [const { Vec::new() }; SIZE_CLASSES],
        idle_bytes: 0,
    }),
};

impl Cache {
    fn lists(&self) -> std::sync::MutexGuard<'_, CacheLists> {
        // The lists stay consistent whatever panicked while they were held: each change is
        // one push or pop and one addition.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle allocation of `size_bytes`, if the cache holds one.
    fn take(&self, size_bytes: usize) -> Option<NonNull<u8>> {
        size_class(size_bytes)?;
        let mut lists = self.lists();
        let Idle(ptr) = lists.free[class_index(size_bytes)].pop()?;
        lists.idle_bytes -= size_bytes;
        Some(ptr)
    }

    /// Keeps `ptr`, an allocation of `size_bytes` (a size class), for reuse; false when the
    /// cache is full and the caller must free it.
    fn put(&self, ptr: NonNull<u8>, size_bytes: usize) -> bool {
        debug_assert_eq!(size_class(size_bytes), Some(size_bytes));
        let mut lists = self.lists();
        if lists.idle_bytes + size_bytes > CACHE_IDLE_BYTES_MAX {
            return false;
        }
        lists.idle_bytes += size_bytes;
        lists.free[class_index(size_bytes)].push(Idle(ptr));
        true
    }
}

/// Whether `data` starts on an O_DIRECT boundary, so it can be handed to the kernel as is.
pub(crate) fn is_aligned(data: &[u8]) -> bool {
    data.as_ptr().addr().is_multiple_of(BUFFER_ALIGN_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_keep_their_length() {
        for len in [0, 1, 4095, 4096, 4097, 1 << 20] {
            let buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.len(), len);
            assert!(is_aligned(buf.as_slice()));
            assert!(buf.as_slice().iter().all(|&b| b == 0));
        }
        let bytes = AlignedBuf::copy_of(b"fabric").into_bytes();
        assert_eq!(&bytes[..], b"fabric");
    }

    #[test]
    fn a_reused_large_buffer_is_zeroed_again_when_zeros_are_asked_for() {
        for len in [CACHED_MIN_BYTES / 2 + 1, 100_000, CACHED_MAX_BYTES] {
            let mut dirty = AlignedBuf::for_overwrite(len);
            dirty.as_mut_slice().fill(0xab);
            drop(dirty);
            let buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.len(), len);
            assert!(is_aligned(buf.as_slice()));
            assert!(buf.as_slice().iter().all(|&b| b == 0), "len {len}");
        }
    }

    #[test]
    fn size_classes_cover_the_cached_lengths_only() {
        assert_eq!(size_class(CACHED_MIN_BYTES / 2), None);
        assert_eq!(size_class(CACHED_MIN_BYTES / 2 + 1), Some(CACHED_MIN_BYTES));
        assert_eq!(size_class(CACHED_MIN_BYTES + 1), Some(2 * CACHED_MIN_BYTES));
        assert_eq!(size_class(CACHED_MAX_BYTES), Some(CACHED_MAX_BYTES));
        assert_eq!(size_class(CACHED_MAX_BYTES + 1), None);
        assert_eq!(class_index(CACHED_MAX_BYTES), SIZE_CLASSES - 1);
    }
}
