//! Repair of a bad copy: blocks that failed their checksum on one replica, and were then read
//! from another, are rewritten on the bad replica from the good one.
//!
//! The repair holds the client's range lock over the whole blocks involved, so no write of
//! the volume can land between reading the good copy and writing it over the bad one, and the
//! rewrite carries the extent's version on the good replica, so versions stay comparable.

use std::sync::Arc;

use super::{Inner, LOCK_BLOCK_BYTES, Replica};

impl Inner {
    /// Rewrites the blocks covering `[offset, offset + len)` on replica `bad` from replica
    /// `good`. Logs the outcome; a failed repair leaves the bad copy to the next read (which
    /// fails over again) or to a resync.
    pub(super) async fn repair(
        self: Arc<Self>,
        bad: Arc<Replica>,
        good: Arc<Replica>,
        offset: u64,
        len: u32,
    ) {
        let first = offset / LOCK_BLOCK_BYTES;
        let end = (offset + u64::from(len)).div_ceil(LOCK_BLOCK_BYTES);
        let _held = self.locks.lock(first, end).await;
        let start = first * LOCK_BLOCK_BYTES;
        let span = ((end * LOCK_BLOCK_BYTES).min(self.config.size_bytes) - start) as u32;
        let replica = bad.link.addr();
        match self.copy_range(&good, &bad, start, span).await {
            Ok(bytes) => {
                tracing::info!(volume = %self.config.volume, %replica, offset = start, bytes, "bad copy repaired from a good replica")
            }
            Err(e) => {
                tracing::warn!(volume = %self.config.volume, %replica, offset = start, error = %e, "bad copy not repaired")
            }
        }
    }
}
