//! [`Ledger`]: what one replica of a group may lack, as this client knows it.
//!
//! Extent versions tell resync which extents differ, but a version is the newest write of a
//! whole extent: a replica that failed one write of an extent and took a later one of the same
//! extent shows the same version as its peers while it lacks the first. And a replica that
//! restarts after a power loss forgets the writes it had not made durable, though it
//! acknowledged them. The client sees both, so it keeps, per replica:
//!
//! - the extents it acknowledged a mutation of since its last flush, and the replica's power
//!   epoch when it did (the link learns it with each session): an answer with another epoch
//!   means the replica's machine restarted, and those extents may be gone (a reconnect or a
//!   process restart keeps the epoch, and loses nothing);
//! - the extents it may lack: a mutation failed on it, or it may have lost unflushed ones.
//!   Resync copies these whatever their versions say, and only then forgets them;
//! - the extents of acknowledged mutations it did not take (it was out of the acting set),
//!   and whether it answered with a new power epoch while it held acknowledged writes that
//!   were not durable. A stale replica with neither, whose power epoch is still the one it
//!   acknowledged its last writes in, holds every acknowledged write of its group: when the
//!   group's only current copy lost power, that replica, not the one that lost power, is the
//!   copy to keep (see `resync`).
//!
//! A replica the client first sees stale (listed so by the map it attached with) lacks what
//! an earlier writer knew about it, and its versions may say it holds writes it does not: the
//! earlier writer may have sent it the writes of a resync that never finished, raising the
//! versions of extents it had not copied yet. Its history is unknown, and its first resync
//! copies every extent the current replicas ever wrote, not only those whose versions differ.
//!
//! Pure bookkeeping; [`super::members`] and the IO paths feed it.

use std::collections::BTreeSet;
use std::ops::Range;

#[derive(Debug, Default)]
pub(super) struct Ledger {
    unflushed: BTreeSet<u64>,
    /// The power epoch in which the replica acknowledged `unflushed`.
    power_epoch: Option<u64>,
    missed: BTreeSet<u64>,
    /// Extents of mutations acknowledged without this replica.
    behind: BTreeSet<u64>,
    /// It answered with a new power epoch while it held acknowledged, unflushed writes.
    lost_acked: bool,
    /// The power epoch in which it held acknowledged, unflushed writes when it failed: they
    /// are intact if it still answers in that epoch.
    unflushed_when_failed: Option<u64>,
    /// Another writer's history: see the module docs.
    history_unknown: bool,
}

/// Taken when a flush is sent; what its acknowledgement makes durable.
#[derive(Debug)]
pub(super) struct FlushMark(BTreeSet<u64>);

impl Ledger {
    /// The ledger of a replica first seen stale: its history is unknown.
    pub(super) fn history_unknown() -> Ledger {
        Ledger {
            history_unknown: true,
            ..Ledger::default()
        }
    }

    /// Whether a resync must copy every extent the current replicas wrote.
    pub(super) fn misses_everything(&self) -> bool {
        self.history_unknown
    }

    /// Whether the replica may have lost acknowledged writes because `power_epoch` is not the
    /// one it acknowledged them in.
    fn restarted(&self, power_epoch: u64) -> bool {
        !self.unflushed.is_empty() && self.power_epoch.is_some_and(|p| p != power_epoch)
    }

    /// Whether it acknowledged mutations since its last flush.
    pub(super) fn holds_unflushed(&self) -> bool {
        !self.unflushed.is_empty()
    }

    /// Moves every unflushed extent to the missed ones.
    fn lose_unflushed(&mut self) {
        self.missed.append(&mut self.unflushed);
        self.power_epoch = None;
    }

    /// It answered with a new power epoch while holding unflushed writes: they are gone.
    fn lose_acked(&mut self) {
        self.lost_acked = true;
        self.lose_unflushed();
    }

    /// A mutation of `extents` was acknowledged in `power_epoch`. `false` if the replica may
    /// have lost earlier ones (it answered with a new epoch): treat it as failed.
    pub(super) fn acked(&mut self, extents: Range<u64>, power_epoch: u64) -> bool {
        if self.restarted(power_epoch) {
            self.lose_acked();
            return false;
        }
        self.unflushed.extend(extents);
        self.power_epoch = Some(power_epoch);
        true
    }

    /// A mutation of `extents` failed, or its outcome is unknown.
    pub(super) fn failed(&mut self, extents: Range<u64>) {
        self.missed.extend(extents);
        if let Some(p) = self.power_epoch.filter(|_| !self.unflushed.is_empty()) {
            match self.unflushed_when_failed {
                Some(earlier) if earlier != p => self.lost_acked = true,
                _ => self.unflushed_when_failed = Some(p),
            }
        }
        // The failure may be the replica going down, taking its unflushed writes along.
        self.lose_unflushed();
    }

    /// A mutation of `extents` was acknowledged without this replica.
    pub(super) fn acked_without(&mut self, extents: Range<u64>) {
        self.behind.extend(extents);
    }

    /// It turned out unable to vouch for what it acknowledged (an extent it reports suspect,
    /// another power epoch): count it as having lost acknowledged writes.
    pub(super) fn cannot_vouch(&mut self) {
        self.lost_acked = true;
    }

    /// Whether it may have lost writes it acknowledged (it answered with a new power epoch
    /// while it held unflushed ones).
    pub(super) fn lost_acked(&self) -> bool {
        self.lost_acked
    }

    /// Whether, as far as this bookkeeping knows, it holds every acknowledged write of its
    /// group, provided its power epoch is still the one it failed in (see
    /// [`Ledger::holds_every_acked_write`]).
    pub(super) fn missed_no_acked_write(&self) -> bool {
        !self.history_unknown && self.behind.is_empty() && !self.lost_acked
    }

    /// Whether it holds every acknowledged write of its group, answering now in power epoch
    /// `power_epoch`: it missed none, and lost none of those it had not made durable.
    pub(super) fn holds_every_acked_write(&self, power_epoch: u64) -> bool {
        self.behind.is_empty() && self.kept_what_it_acked(power_epoch)
    }

    /// Like [`Ledger::holds_every_acked_write`], for extent `e` alone.
    pub(super) fn holds_every_acked_write_of(&self, e: u64, power_epoch: u64) -> bool {
        !self.behind.contains(&e) && self.kept_what_it_acked(power_epoch)
    }

    /// Whether, answering in `power_epoch`, it still holds every write it acknowledged, and
    /// this client knows its whole story.
    fn kept_what_it_acked(&self, power_epoch: u64) -> bool {
        !self.history_unknown
            && !self.lost_acked
            && self.unflushed_when_failed.is_none_or(|p| p == power_epoch)
            && (self.unflushed.is_empty() || self.power_epoch == Some(power_epoch))
    }

    /// A read was answered in `power_epoch`. `false` if the replica may have lost acknowledged
    /// writes (see [`Ledger::acked`]): its answer may be older than them.
    pub(super) fn read(&mut self, power_epoch: u64) -> bool {
        if self.restarted(power_epoch) {
            self.lose_acked();
            return false;
        }
        true
    }

    /// Sent a flush: what it covers.
    pub(super) fn flush_sent(&self) -> FlushMark {
        FlushMark(self.unflushed.clone())
    }

    /// The flush marked `mark` was acknowledged in `power_epoch`. `false` if the replica may have
    /// lost what the flush was to make durable.
    pub(super) fn flushed(&mut self, mark: FlushMark, power_epoch: u64) -> bool {
        if self.restarted(power_epoch) {
            self.lose_acked();
            return false;
        }
        for e in mark.0 {
            self.unflushed.remove(&e);
        }
        if self.unflushed.is_empty() {
            self.power_epoch = None;
        }
        true
    }

    /// The replica's copy of `extents` may differ from the others' whatever its versions say:
    /// a resync is about to copy them while the replica takes new writes, or it took a write
    /// that was not acknowledged.
    pub(super) fn may_lack(&mut self, extents: &[u64]) {
        self.missed.extend(extents.iter().copied());
    }

    /// The extents the replica may lack, for a resync to copy.
    pub(super) fn missed(&self) -> BTreeSet<u64> {
        self.missed.clone()
    }

    /// A resync copied `extents` (taken from [`Ledger::missed`]) to the replica.
    pub(super) fn repaired(&mut self, extents: &BTreeSet<u64>) {
        self.missed.retain(|e| !extents.contains(e));
    }

    /// The replica is current again, its resync having copied every extent the current
    /// replicas wrote (or it held every acknowledged write already): from here on this
    /// client's bookkeeping is the replica's whole story.
    pub(super) fn history_known(&mut self) {
        self.history_unknown = false;
        self.behind.clear();
        self.lost_acked = false;
        self.unflushed_when_failed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(extents: &[u64]) -> BTreeSet<u64> {
        extents.iter().copied().collect()
    }

    #[test]
    fn a_failed_write_is_missed_even_when_a_later_one_of_its_extent_succeeds() {
        let mut l = Ledger::default();
        l.failed(3..5);
        assert!(l.acked(4..5, 1));
        assert_eq!(l.missed(), set(&[3, 4]));
        l.repaired(&set(&[3, 4]));
        assert!(l.missed().is_empty());
    }

    #[test]
    fn an_answer_with_a_new_power_epoch_loses_what_was_not_flushed() {
        let mut l = Ledger::default();
        assert!(l.acked(1..2, 1));
        assert!(l.acked(7..8, 1));
        assert!(!l.read(2), "the replica may have restarted");
        assert_eq!(l.missed(), set(&[1, 7]));
        // Nothing unflushed any more: a new power epoch is no longer suspicious.
        assert!(l.acked(2..3, 2));
        assert!(l.read(2));
    }

    #[test]
    fn a_flush_covers_only_what_was_acknowledged_before_it_was_sent() {
        let mut l = Ledger::default();
        assert!(l.acked(1..2, 1));
        let mark = l.flush_sent();
        assert!(l.acked(2..3, 1));
        assert!(l.flushed(mark, 1));
        // Extent 2 is still unflushed: a restart loses it.
        assert!(!l.read(2));
        assert_eq!(l.missed(), set(&[2]));
    }

    #[test]
    fn a_flush_answered_with_a_new_power_epoch_does_not_count() {
        let mut l = Ledger::default();
        assert!(l.acked(5..6, 1));
        let mark = l.flush_sent();
        assert!(!l.flushed(mark, 2));
        assert_eq!(l.missed(), set(&[5]));
    }

    #[test]
    fn a_replica_holds_every_acked_write_until_one_is_acked_without_it() {
        let mut l = Ledger::default();
        assert!(l.acked(1..2, 3));
        // It fails with the write unflushed: intact only if it answers in the same epoch.
        l.failed(4..5);
        assert!(l.missed_no_acked_write());
        assert!(l.holds_every_acked_write(3));
        assert!(!l.holds_every_acked_write(4), "its machine restarted");
        l.acked_without(6..7);
        assert!(!l.missed_no_acked_write());
        assert!(!l.holds_every_acked_write(3));
        // Once current again, its story starts afresh.
        l.history_known();
        assert!(l.holds_every_acked_write(4));
    }

    #[test]
    fn an_answer_in_a_new_power_epoch_after_unflushed_writes_counts_as_lost() {
        let mut l = Ledger::default();
        assert!(l.acked(1..2, 3));
        assert!(!l.lost_acked());
        assert!(!l.read(4));
        assert!(l.lost_acked());
        assert!(!l.missed_no_acked_write());
        let mut m = Ledger::history_unknown();
        assert!(!m.missed_no_acked_write(), "another writer's history");
        m.history_known();
        m.cannot_vouch();
        assert!(!m.missed_no_acked_write());
    }

    #[test]
    fn with_everything_flushed_a_new_power_epoch_is_harmless() {
        let mut l = Ledger::default();
        assert!(l.acked(5..6, 1));
        let mark = l.flush_sent();
        assert!(l.flushed(mark, 1));
        assert!(l.read(9));
        assert!(l.acked(6..7, 9));
        assert!(l.missed().is_empty());
    }
}
