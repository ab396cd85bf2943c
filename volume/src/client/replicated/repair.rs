//! Repair of a bad copy: blocks that failed their checksum on one replica, and were then read
//! from another, are rewritten on the bad replica from the good one.
//!
//! The repair holds the client's range lock over the whole blocks involved, so no write of
//! the volume can land between reading the good copy and writing it over the bad one, and the
//! rewrite carries the extent's version on the good replica, so versions stay comparable.

//!
//! Repairs run beside the reads that found the bad blocks, at most the pool's
//! `repairs_in_flight_max` at once across the driver: past that a bad block is left to the
//! next read that finds it (which fails over again) or to a resync.

use std::sync::Arc;

use super::members::Replica;
use super::{Inner, LOCK_BLOCK_BYTES};

impl Inner {
    /// Starts the repair of `[offset, offset + len)` on `bad` from `good` if a repair slot is
    /// free; never waits.
    pub(super) fn start_repair(
        self: &Arc<Self>,
        bad: Arc<Replica>,
        good: Arc<Replica>,
        offset: u64,
        len: u32,
    ) {
        let Some(slot) = self.pool.repair_slot() else {
            tracing::warn!(volume = %self.config.volume, replica = %bad.addr(), offset, "repairs at their limit: the bad copy is left for a later read or a resync");
            return;
        };
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let _slot = slot;
            inner.repair(bad, good, offset, len).await;
        });
    }

    /// Rewrites the blocks covering `[offset, offset + len)` on replica `bad` from replica
    /// `good`. Logs the outcome; a failed repair leaves the bad copy to the next read (which
    /// fails over again) or to a resync.
    async fn repair(self: Arc<Self>, bad: Arc<Replica>, good: Arc<Replica>, offset: u64, len: u32) {
        let first = offset / LOCK_BLOCK_BYTES;
        let end = (offset + u64::from(len)).div_ceil(LOCK_BLOCK_BYTES);
        let _held = self.locks.lock(first, end).await;
        let start = first * LOCK_BLOCK_BYTES;
        let span = ((end * LOCK_BLOCK_BYTES).min(self.size()) - start) as u32;
        let replica = bad.addr();
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
