//! Where a forward pass's activations come from. A batch's activations are tens of MiB per
//! layer, allocated and freed at every layer. glibc's malloc takes blocks over its mmap
//! threshold (128 KiB at first) straight from the kernel and hands them back on free, so every
//! layer would fault in fresh zeroed pages: at 32 × 128 tokens that was 13 % of the f32
//! forward's samples (page faults, page clearing, unmapping) and 11 % of its throughput.
//! Raising the threshold to glibc's ceiling (32 MiB, above the largest activation of a
//! 32 × 128 batch of MiniLM) and the trim threshold with it keeps freed activations in the
//! heap for the next layer. The setting is process-wide; it costs a process that embeds at
//! most the heap its largest batch needed.

use std::sync::Once;

/// glibc's largest mmap threshold on 64-bit targets.
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// Free memory at the top of the heap kept rather than given back.
const TRIM_THRESHOLD_BYTES: i32 = 512 << 20;

/// Keeps large freed blocks in the heap (see the module docs); once per process.
pub fn keep_activations_in_heap() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it is called before any thread
        // of ours allocates activations, and glibc serialises it against other allocations.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
        }
    });
}
