//! Heap buffers aligned for O_DIRECT.
//!
//! O_DIRECT requires the memory address, the file offset and the length of every transfer to be
//! aligned to the logical block size. `Vec<u8>` and `Bytes` give no alignment guarantee, so both
//! real backends read into (and, when needed, copy writes through) an [`AlignedBuf`].

use std::alloc::{self, Layout};
use std::ptr::NonNull;

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
        let size_bytes = len
            .max(1)
            .checked_next_multiple_of(BUFFER_ALIGN_BYTES)
            .expect("buffer length overflows usize");
        let layout = Layout::from_size_align(size_bytes, BUFFER_ALIGN_BYTES)
            .expect("aligned buffer layout is valid");
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        assert!(ptr.as_ptr().addr().is_multiple_of(BUFFER_ALIGN_BYTES));
        AlignedBuf { ptr, len, layout }
    }

    /// A copy of `data` in aligned memory.
    pub(crate) fn copy_of(data: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        buf
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
        // SAFETY: allocated in `zeroed` with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
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
}
