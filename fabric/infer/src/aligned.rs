//! A fixed-length, zero-initialised buffer aligned to a cache line, so packed panels start on
//! 64-byte boundaries and every tile row and vector load stays inside one line.

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every packed buffer, bytes: one cache line, one AMX tile row, one zmm.
pub(crate) const ALIGN_BYTES: usize = 64;

/// Plain-old-data element types that are valid when all bits are zero.
///
/// # Safety
/// Implementors must be `Copy`, have no drop glue and accept the all-zero bit pattern.
pub(crate) unsafe trait Zeroable: Copy {}
// SAFETY: integers and floats are valid for all-zero bits and have no drop glue.
unsafe impl Zeroable for f32 {}
// SAFETY: as above.
unsafe impl Zeroable for i32 {}
// SAFETY: as above.
unsafe impl Zeroable for u16 {}
// SAFETY: as above.
unsafe impl Zeroable for i8 {}

pub(crate) struct AlignedVec<T: Zeroable> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: AlignedVec owns its elements exclusively, like Vec<T>.
unsafe impl<T: Zeroable + Send> Send for AlignedVec<T> {}
// SAFETY: shared access only hands out &[T], like Vec<T>.
unsafe impl<T: Zeroable + Sync> Sync for AlignedVec<T> {}

impl<T: Zeroable> AlignedVec<T> {
    pub(crate) fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Self {
                ptr: NonNull::dangling(),
                len,
            };
        }
        let layout = Self::layout(len);
        // SAFETY: layout has non-zero size (len > 0 and T is not a ZST for our impls).
        let raw = unsafe { alloc_zeroed(layout) } as *mut T;
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        let bytes = len
            .checked_mul(size_of::<T>())
            .expect("packed buffer size overflows usize");
        Layout::from_size_align(bytes, ALIGN_BYTES.max(align_of::<T>()))
            .expect("packed buffer layout")
    }
}

impl<T: Zeroable> Drop for AlignedVec<T> {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: ptr was allocated in `zeroed` with exactly this layout.
            unsafe { dealloc(self.ptr.as_ptr() as *mut u8, Self::layout(self.len)) }
        }
    }
}

impl<T: Zeroable> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr points at len initialised (zeroed or since written) elements we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable + std::fmt::Debug> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedVec(len={})", self.len)
    }
}
