//! When a stale replica's copy is the one to keep.
//!
//! Resync copies a stale replica's extents from a live one. But the live ones may be worse:
//! when a group's last current copy loses power, its extents that had writes in flight come
//! back suspect (`replica::intent`), possibly torn, while a replica that left the acting set
//! before still holds every acknowledged write of them. This client knows when that is so,
//! from the replica's [`Ledger`](super::ledger): no write was acknowledged without it (in the
//! extent, or at all), and it still answers in the power epoch it acknowledged its unflushed
//! writes in. Then:
//!
//! - with no live replica at all, the stale one is brought back without a copy
//!   ([`Inner::reinstate`]), and the replica that lost power is refused a return to `Live`
//!   and leaves in its turn (`members`);
//! - per extent, when no live replica can vouch for it, the stale replica's copy is written
//!   over the live ones' under a fresh version ([`Inner::keep_target_copy`]).

use std::future::Future;
use std::sync::Arc;

use crate::client::membership::Event;
use crate::volume::VolumeError;
use crate::wire::{EXTENT_SIZE_BYTES, ExtentVersion, Op, Request, WriteVersion};

use super::members::Replica;
use super::resync::{CatchingUp, ResyncReport};
use super::{Inner, Reach};

impl Inner {
    /// `replica`'s power epoch, as it answers now.
    pub(super) async fn power_epoch(&self, replica: &Replica) -> Result<u64, VolumeError> {
        let ping = Request::new(self.header(Op::Ping, 0, 0, 0, WriteVersion::NONE));
        let (_, power_epoch) = replica
            .link
            .call_in_session(ping)
            .await
            .map_err(|e| VolumeError::Io(e.to_string()))?;
        Ok(power_epoch)
    }

    /// Brings stale replica `t` of `group`, which has no live replica to copy from, back
    /// without a copy, if it holds every acknowledged write of the group: no write was
    /// acknowledged without it, it lost none of those it acknowledged (its power epoch is the
    /// one it acknowledged its unflushed writes in: `power_epoch`, as it answered just before),
    /// and it can vouch for each of its extents (`versions`, read before). That is the case when the group's last current copy lost
    /// power after this replica had left: the metadata service kept the replica that lost
    /// power, this client knows which one holds the data. Decided with the group's writes
    /// held, so no acknowledgement slips in between.
    pub(super) async fn reinstate<F>(
        self: &Arc<Self>,
        group: usize,
        t: &Arc<Replica>,
        power_epoch: u64,
        versions: &[ExtentVersion],
        extents: &[u64],
        restore: F,
    ) -> Result<ResyncReport, VolumeError>
    where
        F: Future<Output = Result<(), String>>,
    {
        let target = t.addr();
        let no_source = || VolumeError::Io(format!("group {group} has no live replica"));
        let _held = self.group_locks[group].write().await;
        if self.members(group).iter().any(|r| r.is_live()) || !t.is_stale() {
            return Err(no_source());
        }
        if !t.ledger().missed_no_acked_write() {
            return Err(no_source());
        }
        // From here on, a replica that cannot be brought back is no longer counted as holding
        // every acknowledged write, so that the one whose removal was refused may serve again.
        if !t.ledger().holds_every_acked_write(power_epoch) {
            tracing::warn!(volume = %self.config.volume, group, replica = %target, power_epoch, "the replica that missed no acknowledged write lost some it had not flushed: not brought back alone");
            t.ledger().cannot_vouch();
            return Err(no_source());
        }
        if let Some(e) = extents.iter().find(|&&e| versions[e as usize].suspect) {
            tracing::warn!(volume = %self.config.volume, group, replica = %target, extent = e, "the replica that missed no acknowledged write cannot vouch for one of its extents: not brought back alone");
            t.ledger().cannot_vouch();
            return Err(no_source());
        }
        let _catching_up = CatchingUp::start(self, group, t);
        restore.await.map_err(VolumeError::Io)?;
        // Its missed extents stay in its ledger: writes that failed on it may have landed on
        // the replicas it now outranks, and their resyncs from it must copy those extents.
        t.ledger().history_known();
        self.event(group, t, Event::Restored);
        tracing::warn!(volume = %self.config.volume, group, replica = %target, "the group's last current copy lost acknowledged writes: brought back the stale replica that holds every one, without a copy");
        Ok(ResyncReport {
            extents_in_group: extents.len() as u64,
            ..ResyncReport::default()
        })
    }

    /// Whether stale replica `t`, answering in `power_epoch`, holds every acknowledged write of
    /// extent `e`: its ledger says so and it can vouch for the extent's blocks. The caller
    /// holds the extent's range.
    pub(super) async fn vouches_for(&self, t: &Replica, e: u64, power_epoch: u64) -> bool {
        if !t.ledger().holds_every_acked_write_of(e, power_epoch) {
            return false;
        }
        matches!(
            self.versions(&t.link, e, 1, Reach::Responsive).await.as_deref(),
            Ok([v]) if !v.suspect
        )
    }

    /// Writes stale replica `t`'s copy of extent `e` over every live replica of `group`, and
    /// back to `t`, all under one fresh version of this writer, so that the copies agree in
    /// contents and version. A live replica that fails it leaves the acting set. The caller
    /// holds the extent's range. Returns the bytes written to `t`.
    pub(super) async fn keep_target_copy(
        self: &Arc<Self>,
        group: usize,
        t: &Arc<Replica>,
        e: u64,
    ) -> Result<u64, VolumeError> {
        let offset = e * EXTENT_SIZE_BYTES;
        let len = (self.size() - offset).min(EXTENT_SIZE_BYTES) as u32;
        let version = self.next_version();
        for s in self.members(group).iter().filter(|r| r.is_live()) {
            if let Err(why) = self.copy_stamped(t, s, offset, len, version).await {
                self.failed(group, s, why.to_string());
            }
        }
        self.copy_stamped(t, t, offset, len, version).await
    }
}
