//! Exclusive locks over block ranges.
//!
//! Writes that cover part of a block must read, patch and rewrite the whole block. Two such
//! writes to different bytes of one block, or one of them racing a full-block write, would
//! otherwise lose an update. Every mutation therefore holds its block range exclusively; reads
//! stay lock free and only take a range when they must re-check a checksum.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Exclusive holders of half-open block ranges `[start, end)`.
#[derive(Default)]
pub struct RangeLock {
    held: Mutex<Vec<(u64, u64)>>,
    released: Notify,
}

/// Holds a range until dropped.
pub struct RangeGuard {
    lock: Arc<RangeLock>,
    range: (u64, u64),
}

impl RangeLock {
    /// Waits until no held range overlaps `[start, end)`, then holds it.
    pub async fn lock(self: &Arc<Self>, start: u64, end: u64) -> RangeGuard {
        assert!(start < end, "empty range {start}..{end}");
        loop {
            // Register interest before checking, so a release between the check and the await
            // still wakes us (tokio's `Notified` receives `notify_waiters` once created).
            let released = self.released.notified();
            {
                let mut held = self.held.lock().expect("range lock poisoned");
                if !held.iter().any(|&(s, e)| s < end && start < e) {
                    held.push((start, end));
                    return RangeGuard {
                        lock: Arc::clone(self),
                        range: (start, end),
                    };
                }
            }
            released.await;
        }
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        let mut held = self.lock.held.lock().expect("range lock poisoned");
        let at = held
            .iter()
            .position(|&r| r == self.range)
            .expect("a held range is in the table");
        held.swap_remove(at);
        drop(held);
        self.lock.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn overlapping_ranges_wait_and_disjoint_ones_do_not() {
        let lock = Arc::new(RangeLock::default());
        let first = lock.lock(0, 10).await;
        let _disjoint = lock.lock(10, 20).await;

        let waiter = {
            let lock = Arc::clone(&lock);
            tokio::spawn(async move { lock.lock(5, 6).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "overlap must wait for the holder");
        drop(first);
        let _g = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released range wakes the waiter")
            .expect("task");
    }
}
