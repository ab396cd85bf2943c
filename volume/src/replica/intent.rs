//! [`IntentLog`]: which extents of one volume on this replica may hold writes that are not
//! durable yet, kept durable itself, so that a replica that comes back from a crash knows which
//! of its extents it cannot vouch for (a write-intent record, like md's bitmap).
//!
//! Why. A power loss while writes are unflushed can leave an extent with torn sectors, or with
//! its data and its version from different writes. The versions cannot tell: an extent whose
//! version survived but whose data did not looks exactly like a current copy, so a new writer
//! that compares versions keeps it, and once the other copies are gone the block is lost. A
//! replica that knows which extents it may have lost calls them *suspect*; the volume client
//! copies a suspect extent from a replica that is not suspect before it trusts it.
//!
//! The record. The `intent` file holds one byte per extent: 1 (marked) while the extent may
//! hold a write that no completed flush made durable, 2 once it is suspect. A mutation marks
//! its extents, durably, before its data is written (concurrent marks share one sync); a flush
//! clears the extents that no write touched since the flush before it (clearing lazily, so a
//! hot extent is marked once, not once per flush; a clear needs no sync, as a mark left behind
//! only costs a copy). When the replica starts after its machine restarted ([`super::power`]),
//! every marked extent becomes suspect, durably, before anything is served; a process restart
//! loses nothing and leaves the marks as they are. An extent whose mutation failed is suspect
//! too. A suspect extent stays so until a write covers it whole (the copy that repairs it).
//!
//! Cost: one `fdatasync` of this file the first time an extent is written after it fell clean
//! (batched across concurrent writes), none in steady state.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::io::{BlockFile, sparse};
use crate::wire::EXTENT_SIZE_BYTES;

/// The byte of an extent with no write that may not be durable.
const CLEAN: u8 = 0;
/// The byte of a marked extent.
const MARKED: u8 = 1;
/// The byte of a suspect extent.
const SUSPECT: u8 = 2;

/// What the log knows of one extent; extents with nothing to know are absent.
#[derive(Clone, Copy, Debug, Default)]
struct ExtentIntent {
    /// The file marks the extent (durably, once `mark` returned).
    marked: bool,
    /// The extent was marked when the volume opened and has not been rewritten whole since.
    suspect: bool,
    /// Mutations of the extent under way.
    in_flight: u32,
    /// The flush generation when the last mutation of the extent started.
    written_in: u64,
}

impl ExtentIntent {
    fn forgettable(&self) -> bool {
        !self.marked && !self.suspect && self.in_flight == 0
    }
}

#[derive(Default)]
struct State {
    extents: HashMap<u64, ExtentIntent>,
    /// Per suspect extent, the blocks written whole since it became suspect (in memory only:
    /// a restart forgets them and the extent stays suspect). Once they cover the extent, its
    /// contents are known again, as after one write of the whole extent.
    covered: HashMap<u64, Vec<u64>>,
    /// Extents a mutation waits to see marked, for the next sync to write.
    pending: Vec<u64>,
    /// Incremented when a flush starts.
    generation: u64,
}

/// The intent record of one volume on this replica.
pub struct IntentLog {
    file: Arc<dyn BlockFile>,
    /// Raised by a grow, never lowered.
    extents: AtomicU64,
    state: Mutex<State>,
    /// Held while marks are written and synced; the holder writes every pending mark.
    persist: tokio::sync::Mutex<()>,
}

/// A mutation of extents under way; dropping it ends the mutation.
pub struct Mutating<'a> {
    log: &'a IntentLog,
    first: u64,
    end: u64,
}

/// What a flush may clear once it completed.
pub struct FlushTicket {
    generation: u64,
    candidates: Vec<u64>,
}

impl IntentLog {
    /// Opens the record in `file` (buffered) for a volume of `size_bytes`. With `power_lost`
    /// (the machine restarted since the replica last ran), every marked extent becomes suspect,
    /// durably, before this returns.
    pub async fn open(
        file: Arc<dyn BlockFile>,
        size_bytes: u64,
        power_lost: bool,
    ) -> io::Result<IntentLog> {
        let extents = size_bytes.div_ceil(EXTENT_SIZE_BYTES);
        sparse::size_table(&*file, extents, "intent").await?;
        let mut state = State::default();
        sparse::for_each_allocated(&*file, extents, 1, |at, bytes| {
            for (i, &b) in bytes.iter().enumerate() {
                let extent = at + i as u64;
                match b {
                    CLEAN => {}
                    MARKED | SUSPECT => {
                        let e = state.extents.entry(extent).or_default();
                        e.marked = true;
                        e.suspect = b == SUSPECT || power_lost;
                    }
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("intent file: extent {extent} has byte {b}"),
                        ));
                    }
                }
            }
            Ok(())
        })
        .await?;
        if power_lost {
            let mut suspect: Vec<u64> = state
                .extents
                .iter()
                .filter(|(_, i)| i.suspect)
                .map(|(&e, _)| e)
                .collect();
            suspect.sort_unstable();
            write_runs(&file, &suspect, SUSPECT).await?;
            file.sync_data().await?;
        }
        Ok(IntentLog {
            file,
            extents: AtomicU64::new(extents),
            state: Mutex::new(state),
            persist: tokio::sync::Mutex::new(()),
        })
    }

    /// Makes room for the extents of a volume grown to `size_bytes` (clean), durably. Call
    /// before the volume itself grows.
    pub async fn grow(&self, size_bytes: u64) -> io::Result<()> {
        let extents = size_bytes.div_ceil(EXTENT_SIZE_BYTES);
        // Already larger after an earlier grow that went further and failed: left so.
        if extents > self.extents() {
            sparse::grow_table(&*self.file, extents).await?;
            self.extents.fetch_max(extents, Ordering::AcqRel);
        }
        Ok(())
    }

    fn extents(&self) -> u64 {
        self.extents.load(Ordering::Acquire)
    }

    /// Extents `first..first + count` that are suspect (indices into the volume).
    pub fn suspect(&self, first: u64, count: u64) -> Vec<bool> {
        self.flags(first, count)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    /// Per extent of `first..first + count`: whether it is suspect, and whether it is marked
    /// or being written (written recently).
    pub fn flags(&self, first: u64, count: u64) -> Vec<(bool, bool)> {
        assert!(first + count <= self.extents());
        let state = self.state.lock().expect("intent state");
        (first..first + count)
            .map(|e| {
                state
                    .extents
                    .get(&e)
                    .map_or((false, false), |i| (i.suspect, i.marked || i.in_flight > 0))
            })
            .collect()
    }

    /// How many extents are suspect.
    pub fn suspect_count(&self) -> usize {
        let state = self.state.lock().expect("intent state");
        state.extents.values().filter(|i| i.suspect).count()
    }

    /// Starts a mutation of extents `first..end`: returns once each of them is marked durably.
    /// The mutation lasts until the returned guard is dropped.
    pub async fn mutate(&self, first: u64, end: u64) -> io::Result<Mutating<'_>> {
        assert!(
            first < end && end <= self.extents(),
            "extents {first}..{end}"
        );
        {
            let mut state = self.state.lock().expect("intent state");
            let generation = state.generation;
            for e in first..end {
                let i = state.extents.entry(e).or_default();
                i.in_flight += 1;
                i.written_in = generation;
            }
        }
        let guard = Mutating {
            log: self,
            first,
            end,
        };
        while !self.all_marked(first, end) {
            let _persist = self.persist.lock().await;
            let batch = {
                let mut state = self.state.lock().expect("intent state");
                for e in first..end {
                    if !state.extents[&e].marked {
                        state.pending.push(e);
                    }
                }
                let mut batch = std::mem::take(&mut state.pending);
                batch.retain(|e| state.extents.get(e).is_some_and(|i| !i.marked));
                batch.sort_unstable();
                batch.dedup();
                batch
            };
            if batch.is_empty() {
                continue;
            }
            write_runs(&self.file, &batch, MARKED).await?;
            self.file.sync_data().await?;
            let mut state = self.state.lock().expect("intent state");
            for e in batch {
                if let Some(i) = state.extents.get_mut(&e) {
                    i.marked = true;
                }
            }
        }
        Ok(guard)
    }

    fn all_marked(&self, first: u64, end: u64) -> bool {
        let state = self.state.lock().expect("intent state");
        (first..end).all(|e| state.extents[&e].marked)
    }

    /// A mutation of extents `first..end`, still under way, failed: what they hold is unknown
    /// until rewritten whole (a failed write may have torn the blocks it did not finish).
    pub async fn failed(&self, first: u64, end: u64) -> io::Result<()> {
        {
            let mut state = self.state.lock().expect("intent state");
            for e in first..end {
                state.covered.remove(&e);
            }
        }
        self.set_suspect(first, end, true).await
    }

    /// A mutation, still under way, wrote `[offset, offset + len)` of a volume of
    /// `volume_bytes`: a suspect extent it covers whole is known again, and so is one whose
    /// blocks the writes since it became suspect covered whole between them (a copy in
    /// several pieces). They stay marked. Blocks written only in part do not count: their
    /// rest was read back from the old, perhaps torn, contents. (Written without a sync: a
    /// lost write leaves the extent suspect, which costs a copy.)
    pub async fn rewrote(&self, offset: u64, len: u64, volume_bytes: u64) -> io::Result<()> {
        const BLOCK: u64 = crate::store::BLOCK_SIZE_BYTES;
        let first_block = offset.div_ceil(BLOCK);
        let end_block = (offset + len) / BLOCK;
        let mut known = Vec::new();
        {
            let mut state = self.state.lock().expect("intent state");
            let per_extent = EXTENT_SIZE_BYTES / BLOCK;
            let mut b = first_block;
            while b < end_block {
                let e = b / per_extent;
                let extent_end = ((e + 1) * per_extent).min(end_block);
                let suspect = state.extents.get(&e).is_some_and(|i| i.suspect);
                if suspect {
                    let blocks_in_extent = (volume_bytes.saturating_sub(e * EXTENT_SIZE_BYTES))
                        .min(EXTENT_SIZE_BYTES)
                        / BLOCK;
                    let bits = state
                        .covered
                        .entry(e)
                        .or_insert_with(|| vec![0; per_extent.div_ceil(64) as usize]);
                    for block in b..extent_end {
                        let i = block - e * per_extent;
                        bits[(i / 64) as usize] |= 1 << (i % 64);
                    }
                    let whole = (0..blocks_in_extent)
                        .all(|i| bits[(i / 64) as usize] & (1 << (i % 64)) != 0);
                    if whole {
                        state.covered.remove(&e);
                        known.push(e);
                    }
                }
                b = extent_end;
            }
        }
        for e in known {
            self.set_suspect(e, e + 1, false).await?;
        }
        Ok(())
    }

    async fn set_suspect(&self, first: u64, end: u64, suspect: bool) -> io::Result<()> {
        let _persist = self.persist.lock().await;
        let changed: Vec<u64> = {
            let mut state = self.state.lock().expect("intent state");
            (first..end)
                .filter(|e| {
                    let i = state
                        .extents
                        .get_mut(e)
                        .expect("a mutating extent is known");
                    assert!(i.in_flight > 0 && i.marked, "extent {e} is being mutated");
                    std::mem::replace(&mut i.suspect, suspect) != suspect
                })
                .collect()
        };
        write_runs(&self.file, &changed, if suspect { SUSPECT } else { MARKED }).await
    }

    /// Call as a flush starts: the ticket names the extents its completion may clear, those
    /// no mutation touched since the previous flush started.
    pub fn flush_started(&self) -> FlushTicket {
        let mut state = self.state.lock().expect("intent state");
        state.generation += 1;
        let generation = state.generation;
        let candidates = state
            .extents
            .iter()
            .filter(|(_, i)| {
                i.marked && !i.suspect && i.in_flight == 0 && i.written_in + 2 <= generation
            })
            .map(|(&e, _)| e)
            .collect();
        FlushTicket {
            generation,
            candidates,
        }
    }

    /// Call once the flush of `ticket` made the volume's data durable: clears the candidates
    /// no mutation touched since. The clears reach disk with a later sync.
    pub async fn flush_completed(&self, ticket: FlushTicket) -> io::Result<()> {
        let _persist = self.persist.lock().await;
        let cleared: Vec<u64> = {
            let mut state = self.state.lock().expect("intent state");
            let mut cleared = Vec::new();
            for e in ticket.candidates {
                let Some(i) = state.extents.get_mut(&e) else {
                    continue;
                };
                if i.marked && i.in_flight == 0 && i.written_in + 2 <= ticket.generation {
                    i.marked = false;
                    cleared.push(e);
                    if i.forgettable() {
                        state.extents.remove(&e);
                    }
                }
            }
            cleared.sort_unstable();
            cleared
        };
        write_runs(&self.file, &cleared, CLEAN).await
    }
}

/// Writes `byte` for each of `extents` (sorted, distinct), a write per run of neighbours.
async fn write_runs(file: &Arc<dyn BlockFile>, extents: &[u64], byte: u8) -> io::Result<()> {
    for (start, len) in runs(extents) {
        let bytes = Bytes::from(vec![byte; len as usize]);
        file.write_at(start, bytes, false).await?;
    }
    Ok(())
}

impl Drop for Mutating<'_> {
    fn drop(&mut self) {
        let mut state = self.log.state.lock().expect("intent state");
        for e in self.first..self.end {
            let i = state
                .extents
                .get_mut(&e)
                .expect("a mutating extent is known");
            i.in_flight -= 1;
        }
    }
}

/// Sorted, distinct extents as runs `(first, count)`.
fn runs(extents: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &e in extents {
        match out.last_mut() {
            Some((start, len)) if *start + *len == e => *len += 1,
            _ => out.push((e, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Disk;
    use crate::io::portable::PortableDisk;
    use crate::store::CRC_OPEN;

    const SIZE: u64 = 64 * EXTENT_SIZE_BYTES;

    async fn open(dir: &std::path::Path) -> IntentLog {
        reopen(dir, false).await
    }

    async fn reopen(dir: &std::path::Path, power_lost: bool) -> IntentLog {
        let file = PortableDisk::new("test")
            .open(&dir.join("intent"), CRC_OPEN)
            .unwrap();
        IntentLog::open(file, SIZE, power_lost).await.unwrap()
    }

    async fn flush(log: &IntentLog) {
        let ticket = log.flush_started();
        log.flush_completed(ticket).await.unwrap();
        log.file.sync_data().await.unwrap();
    }

    #[tokio::test]
    async fn extents_written_before_a_power_loss_are_suspect_until_rewritten_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        drop(log.mutate(3, 5).await.unwrap());
        drop(log.mutate(10, 11).await.unwrap());
        assert_eq!(log.suspect(0, 12), vec![false; 12], "no crash yet");
        drop(log);
        // A process restart loses nothing: marked, not suspect.
        let again = reopen(dir.path(), false).await;
        assert_eq!(again.suspect_count(), 0);
        assert_eq!(again.flags(3, 1), vec![(false, true)]);
        drop(again);

        let again = reopen(dir.path(), true).await;
        let suspect: Vec<u64> = (0..64).filter(|&e| again.suspect(e, 1)[0]).collect();
        assert_eq!(suspect, vec![3, 4, 10]);
        // Flushes do not clear a suspect extent: only a whole rewrite does.
        for _ in 0..3 {
            flush(&again).await;
        }
        assert!(again.suspect(3, 1)[0]);
        let rewrite = again.mutate(3, 4).await.unwrap();
        again
            .rewrote(3 * EXTENT_SIZE_BYTES, EXTENT_SIZE_BYTES, SIZE)
            .await
            .unwrap();
        drop(rewrite);
        assert_eq!(again.suspect(3, 2), vec![false, true]);
        drop(again);
        // Suspect stays suspect across a later process restart; rewritten stays repaired.
        let later = reopen(dir.path(), false).await;
        assert_eq!(later.suspect(3, 2), vec![false, true]);
        assert!(later.suspect(10, 1)[0]);
    }

    #[tokio::test]
    async fn pieces_that_cover_a_suspect_extent_between_them_make_it_known_again() {
        const E: u64 = EXTENT_SIZE_BYTES;
        const PIECE: u64 = 512 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        drop(log.mutate(2, 4).await.unwrap());
        drop(log);
        let log = reopen(dir.path(), true).await;
        assert_eq!(log.suspect(2, 2), vec![true, true]);
        let write = |offset: u64, len: u64| {
            let log = &log;
            async move {
                let e = offset / E;
                let m = log.mutate(e, (offset + len).div_ceil(E)).await.unwrap();
                log.rewrote(offset, len, SIZE).await.unwrap();
                drop(m);
            }
        };
        // Seven of eight pieces, and the last one a byte short of its last block: suspect.
        for p in 0..7 {
            write(2 * E + p * PIECE, PIECE).await;
        }
        write(2 * E + 7 * PIECE, PIECE - 1).await;
        assert!(
            log.suspect(2, 1)[0],
            "a block written in part does not count"
        );
        write(2 * E + 7 * PIECE, PIECE).await;
        assert!(!log.suspect(2, 1)[0], "covered whole");
        // A failure between pieces forgets what the earlier pieces covered.
        for p in 0..4 {
            write(3 * E + p * PIECE, PIECE).await;
        }
        let m = log.mutate(3, 4).await.unwrap();
        log.failed(3, 4).await.unwrap();
        drop(m);
        for p in 4..8 {
            write(3 * E + p * PIECE, PIECE).await;
        }
        assert!(log.suspect(3, 1)[0]);
        drop(log);
        let later = reopen(dir.path(), false).await;
        assert_eq!(later.suspect(2, 2), vec![false, true], "durably so");
    }

    #[tokio::test]
    async fn a_failed_mutation_leaves_its_extents_suspect() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        let m = log.mutate(6, 8).await.unwrap();
        log.failed(6, 8).await.unwrap();
        drop(m);
        assert_eq!(log.suspect(5, 4), vec![false, true, true, false]);
        flush(&log).await;
        drop(log);
        assert_eq!(
            reopen(dir.path(), false).await.suspect(5, 4),
            vec![false, true, true, false]
        );
    }

    #[tokio::test]
    async fn an_extent_falls_clean_after_two_flushes_without_writes() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        drop(log.mutate(7, 8).await.unwrap());
        flush(&log).await;
        // Written since the flush before this one (none): still marked.
        drop(log);
        assert!(reopen(dir.path(), true).await.suspect(7, 1)[0]);

        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        drop(log.mutate(7, 8).await.unwrap());
        flush(&log).await;
        flush(&log).await;
        drop(log);
        assert!(!reopen(dir.path(), true).await.suspect(7, 1)[0]);
    }

    #[tokio::test]
    async fn a_mutation_in_flight_keeps_its_extent_marked_across_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        let slow = log.mutate(2, 3).await.unwrap();
        for _ in 0..3 {
            flush(&log).await;
        }
        drop(slow);
        drop(log);
        assert!(reopen(dir.path(), true).await.suspect(2, 1)[0]);
    }

    #[tokio::test]
    async fn a_hot_extent_stays_marked() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).await;
        for _ in 0..4 {
            drop(log.mutate(5, 6).await.unwrap());
            flush(&log).await;
        }
        drop(log);
        assert!(reopen(dir.path(), true).await.suspect(5, 1)[0]);
    }

    #[test]
    fn runs_group_neighbours() {
        assert_eq!(runs(&[1, 2, 3, 7, 9, 10]), vec![(1, 3), (7, 1), (9, 2)]);
        assert!(runs(&[]).is_empty());
    }
}
