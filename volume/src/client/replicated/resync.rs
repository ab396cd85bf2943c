//! Delta resync: bringing a stale replica of one PG back into the acting set.
//!
//! The volume's writer does it, because only the writer can hold the volume still: every
//! extent of the volume in the PG whose version on the stale replica differs from a current
//! replica's is copied whole, under the client's range lock for that extent, so no write of the
//! extent can interleave with its copy. Extents with equal versions were not written while the
//! replica was away and are not copied — that is the delta — unless the client's ledger says
//! the replica may lack them, or the replica's history is another writer's (see `ledger`).
//!
//! From the moment the resync starts, every new write of the group also goes to the replica
//! (it "catches up"), and so does every client flush, so a rebuild converges however busy the
//! volume is: an extent copied once stays current. Such a write does not count towards the
//! client's acknowledgement, and if it fails the resync fails and starts over later; the
//! client's write still waits for its answer, so none is in flight on the replica once the
//! range is released (a later copy of the extent could otherwise be overwritten by it).
//!
//! Two passes. The first runs beside foreground IO, a few extents at a time; while clients do IO
//! it keeps to the configured pace (by default [`RESYNC_BYTES_PER_SEC_MAX`]; none when the
//! replicas' disk schedulers govern recovery), and with none it runs as fast as the disks go.
//! Its copies are then flushed on the replica, still beside foreground IO. The second holds
//! the group's writes for a moment: it checks that no version differs any more (copying and
//! flushing what does, which is nothing when every write reached the replica), has the
//! metadata service restore the replica, and only then marks it live: the replica serves no
//! read before it holds every acknowledged write.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::volume::VolumeError;
use crate::wire::{
    EXTENT_SIZE_BYTES, ExtentVersion, FLAG_MAY_TRIM, Op, Request, VERSIONS_PER_REQUEST_MAX,
    WriteVersion,
};

use crate::client::membership::{Event, Membership};

use super::members::Replica;
use super::{Inner, LOCK_BLOCK_BYTES, Reach, ReplicatedVolume};

/// The flags that mark a request as recovery for the replicas' disk schedulers.
const RECOVERY: u8 = crate::sched::class::Class::Recovery.flags();

/// Most bytes a resync copies per second while clients do IO (the first pass).
pub const RESYNC_BYTES_PER_SEC_MAX: u64 = 256 * 1024 * 1024;
/// Extents one resync copies at once: a copy is a read on one replica, then a write on
/// another, so with one at a time each disk would idle half the time. Copies to one
/// destination are further bounded across every resync of the driver by its pool
/// ([`crate::client::pool::COPIES_IN_FLIGHT_PER_DESTINATION_MAX_DEFAULT`]).
pub const COPIES_IN_FLIGHT_PER_RESYNC_MAX: usize = 4;

/// What one resync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResyncReport {
    /// Extents of the volume in the PG.
    pub extents_in_group: u64,
    /// Extents whose version differed, and so were copied (in both passes).
    pub extents_copied: u64,
    pub bytes_copied: u64,
}

impl ReplicatedVolume {
    /// Replicas out of the acting set, as `(group, address)`.
    pub fn stale_replicas(&self) -> Vec<(usize, SocketAddr)> {
        let mut out = Vec::new();
        for g in 0..self.inner.groups.len() {
            for r in self.inner.members(g).iter().filter(|r| r.is_stale()) {
                out.push((g, r.addr()));
            }
        }
        out
    }

    /// Replicas that failed and have not left the acting set yet (their removal is under way,
    /// or was refused or could not commit), as `(group, address)`.
    pub fn leaving_replicas(&self) -> Vec<(usize, SocketAddr)> {
        let mut out = Vec::new();
        for g in 0..self.inner.groups.len() {
            for r in self
                .inner
                .members(g)
                .iter()
                .filter(|r| r.state().blocks_writes())
            {
                out.push((g, r.addr()));
            }
        }
        out
    }

    /// Brings stale replica `target` of `group` up to date and back into the acting set.
    /// `progress(done, total)` hears how many bytes of the first pass are copied, once before
    /// the first copy and after each. `restore` records the result in the metadata service; it
    /// runs while the group's writes are held, and the replica serves again only if it
    /// succeeds.
    pub async fn resync<F>(
        &self,
        group: usize,
        target: SocketAddr,
        progress: impl Fn(u64, u64),
        restore: F,
    ) -> Result<ResyncReport, VolumeError>
    where
        F: Future<Output = Result<(), String>>,
    {
        let inner = &self.inner;
        inner.check_open()?;
        if group >= inner.groups.len() {
            return Err(VolumeError::Io(format!("no group {group}")));
        }
        let t = inner
            .members(group)
            .iter()
            .find(|r| r.addr() == target && r.state() == Membership::Stale)
            .cloned()
            .ok_or_else(|| {
                VolumeError::Io(format!(
                    "{target} is no stale replica of group {group} (or is resynced already)"
                ))
            })?;
        // The size the resync works over: it stays put while the group is held (see `grow`),
        // and a grow before the group is first held starts the resync over.
        let size = inner.size();
        // The replica's versions before it takes any write: once it catches up, a write to an
        // extent it lacks older writes of would give it the source's version of that extent.
        let before = inner.all_versions(&t, size).await?;
        let t_power_epoch = inner.power_epoch(&t).await?;

        let extents: Vec<u64> = (0..size.div_ceil(EXTENT_SIZE_BYTES))
            .filter(|&e| inner.group_of(e) == group)
            .collect();
        if !inner.members(group).iter().any(|r| r.is_live()) {
            return inner
                .reinstate(group, &t, t_power_epoch, &before, &extents, restore)
                .await;
        }
        let mut report = ResyncReport {
            extents_in_group: extents.len() as u64,
            ..ResyncReport::default()
        };

        let mut paced_since = Instant::now();
        let mut paced_bytes = 0;
        let mut seen_ios = inner.foreground_ios.load(Ordering::Relaxed);
        // Extents the target may lack whatever its versions say (see `ledger`): with another
        // writer's history, every one of the group.
        let mut missed = t.ledger().missed();
        if t.ledger().misses_everything() {
            missed.extend(extents.iter().copied());
        }
        // With the group's writes held (those in flight finish first, none start), compare the
        // source's versions with the replica's and put what differs in the ledger, then let the
        // replica catch up. From here on its versions rise with the writes it takes, which
        // would hide an extent it lacks should this resync fail: the ledger remembers each such
        // extent until the resync succeeds, also when the comparison itself fails part-way.
        let (differing, _catching_up) = {
            let _held = inner.group_locks[group].write().await;
            // Writes past `size` may have been acknowledged without the replica: from here on
            // it catches up with every write, but not with those.
            if inner.size() != size {
                return Err(VolumeError::Io(format!(
                    "the volume grew from {size} bytes as the resync of {target} started; it starts over"
                )));
            }
            let differing = inner
                .differing(group, &before, &extents, &missed, size)
                .await?;
            t.ledger().may_lack(&differing);
            (differing, CatchingUp::start(inner, group, &t))
        };
        missed.extend(differing.iter().copied());
        let total = differing.len() as u64 * EXTENT_SIZE_BYTES;
        tracing::debug!(volume = %inner.config.volume, group, replica = %target, extents = differing.len(), "resync: caught up with the writes in flight; copying");
        progress(0, total);
        let target_replica = &t;
        let copies = futures::stream::iter(differing)
            .map(|e| async move {
                let _slot = inner.pool.copy_slot(target).await;
                // The driver-wide pace, which a governor may set (see `client::pace`).
                inner.pool.pace().take(EXTENT_SIZE_BYTES).await;
                let range = inner.extent_lock(e);
                let _held = inner.locks.lock(range.0, range.1).await;
                inner
                    .copy_extent(group, target_replica, e, t_power_epoch)
                    .await
            })
            .buffer_unordered(COPIES_IN_FLIGHT_PER_RESYNC_MAX);
        let mut copies = std::pin::pin!(copies);
        // Pacing sleeps between completions, which also holds back the next copies.
        while let Some(copied) = copies.next().await {
            let copied = copied?;
            report.bytes_copied += copied;
            report.extents_copied += 1;
            progress(
                (report.extents_copied * EXTENT_SIZE_BYTES).min(total),
                total,
            );
            // While clients do IO, keep to the rate limit so they keep most of the disk.
            let pace = inner.config.resync_pace_bytes_per_sec;
            let ios = inner.foreground_ios.load(Ordering::Relaxed);
            if ios == seen_ios || pace == 0 {
                paced_since = Instant::now();
                paced_bytes = 0;
                continue;
            }
            seen_ios = ios;
            paced_bytes += copied;
            // Whole milliseconds: the timer's resolution, and what keeps a simulated run's
            // timing independent of where the clock started within a millisecond.
            let due = Duration::from_millis(paced_bytes * 1000 / pace);
            if let Some(wait) = due.checked_sub(paced_since.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }

        // What was copied is durable on the replica before it counts as a current copy. The
        // writes it got meanwhile need not be: a client's flush reaches it like any replica.
        let flush = inner.header(Op::Flush, 0, 0, 0, WriteVersion::NONE);
        inner.answered(t.flush(Request::new(flush)).await, target)?;

        let _held = inner.group_locks[group].write().await;
        tracing::debug!(volume = %inner.config.volume, group, replica = %target, "resync: first pass flushed, the group's writes held");
        if !t.is_catching_up() {
            return Err(VolumeError::Io(format!(
                "{target} missed a write or flush while it caught up"
            )));
        }
        let late_missed: BTreeSet<u64> = t.ledger().missed().difference(&missed).copied().collect();
        let now = inner.all_versions(&t, size).await?;
        let late = inner
            .differing(group, &now, &extents, &late_missed, size)
            .await?;
        missed.extend(late_missed);
        for &e in &late {
            report.bytes_copied += inner.copy_extent(group, &t, e, t_power_epoch).await?;
            report.extents_copied += 1;
        }
        if !late.is_empty() {
            inner.answered(t.flush(Request::new(flush)).await, target)?;
        }
        restore.await.map_err(VolumeError::Io)?;
        {
            let mut ledger = t.ledger();
            ledger.repaired(&missed);
            ledger.history_known();
        }
        inner.event(group, &t, Event::Restored);
        if !t.is_live() {
            // A flush failed on it while the restore committed: it is being removed again.
            return Err(VolumeError::Io(format!(
                "{target} failed while the metadata service restored it"
            )));
        }
        tracing::info!(volume = %inner.config.volume, group, replica = %target, extents = report.extents_copied, bytes = report.bytes_copied, "replica resynced and back in the acting set");
        Ok(report)
    }
}

/// Keeps a replica catching up for as long as it lives (a resync that fails part-way stops
/// sending it writes; one that succeeded has made it live, which this leaves alone).
pub(super) struct CatchingUp<'a> {
    inner: &'a Arc<Inner>,
    group: usize,
    replica: &'a Arc<Replica>,
}

impl<'a> CatchingUp<'a> {
    pub(super) fn start(
        inner: &'a Arc<Inner>,
        group: usize,
        replica: &'a Arc<Replica>,
    ) -> CatchingUp<'a> {
        inner.event(group, replica, Event::ResyncStarted);
        CatchingUp {
            inner,
            group,
            replica,
        }
    }
}

impl Drop for CatchingUp<'_> {
    fn drop(&mut self) {
        self.inner
            .event(self.group, self.replica, Event::ResyncEnded);
    }
}

impl Inner {
    /// Lock blocks covering extent `e`.
    pub(super) fn extent_lock(&self, e: u64) -> (u64, u64) {
        let start = e * EXTENT_SIZE_BYTES;
        let end = (start + EXTENT_SIZE_BYTES).min(self.size());
        (start / LOCK_BLOCK_BYTES, end.div_ceil(LOCK_BLOCK_BYTES))
    }

    /// The first live replica of `group`: the copy source.
    fn source(&self, group: usize) -> Result<Arc<Replica>, VolumeError> {
        self.members(group)
            .iter()
            .find(|r| r.is_live())
            .cloned()
            .ok_or_else(|| VolumeError::Io(format!("group {group} has no live replica")))
    }

    /// Extents among `extents` (of a volume of `size` bytes, which `target` was read for)
    /// whose version in `target` (the stale replica's versions)
    /// differs from the source's, that the target cannot vouch for, or that are in `missed`;
    /// also those the source's own ledger says it may lack (it stayed in the acting set
    /// through a refused removal, say): whatever the target holds there must become what the
    /// source holds, or the copies differ under equal versions.
    async fn differing(
        &self,
        group: usize,
        target: &[ExtentVersion],
        extents: &[u64],
        missed: &BTreeSet<u64>,
        size: u64,
    ) -> Result<Vec<u64>, VolumeError> {
        let s = self.source(group)?;
        let source_missed = s.ledger().missed();
        let source = self.all_versions(&s, size).await?;
        Ok(extents
            .iter()
            .copied()
            .filter(|&e| {
                let (s, t) = (source[e as usize].version, target[e as usize]);
                s != t.version
                    || t.suspect
                    || (missed.contains(&e) && s != WriteVersion::NONE)
                    || source_missed.contains(&e)
            })
            .collect())
    }

    /// Versions of every extent of the volume at `size` bytes on `replica`.
    pub(super) async fn all_versions(
        &self,
        replica: &Replica,
        size: u64,
    ) -> Result<Vec<ExtentVersion>, VolumeError> {
        let link = &replica.link;
        let total = size.div_ceil(EXTENT_SIZE_BYTES);
        let mut out = Vec::with_capacity(total as usize);
        let mut first = 0;
        while first < total {
            let count = (total - first).min(u64::from(VERSIONS_PER_REQUEST_MAX)) as u32;
            out.extend(self.versions(link, first, count, Reach::Probe).await?);
            first += u64::from(count);
        }
        Ok(out)
    }

    /// The crc32c of `[offset, offset + len)` on `replica`, computed there.
    pub(super) async fn digest(
        &self,
        replica: &Replica,
        offset: u64,
        len: u32,
    ) -> Result<u32, VolumeError> {
        let link = &replica.background;
        let req = Request::new(self.header(Op::Digest, offset, len, RECOVERY, WriteVersion::NONE));
        let payload = self.answer(link.call(req).await, link.addr())?;
        let crc: [u8; 4] = payload[..]
            .try_into()
            .map_err(|_| VolumeError::Io(format!("{}: malformed digest reply", link.addr())))?;
        Ok(u32::from_le_bytes(crc))
    }

    /// Copies extent `e` from the group's source to replica `t`, stamped with the source's
    /// version; the caller holds the extent's range. Returns the bytes copied. The source is
    /// the first live replica that can vouch for the extent (one that lost power while it was
    /// being written may hold torn blocks). If none can, or the copy finds a damaged block,
    /// and `t` holds every acknowledged write of the extent (`t_power_epoch`: its power
    /// epoch as this resync found it), `t`'s copy is the one kept (see `vouch`); otherwise the
    /// first live replica is the source.
    async fn copy_extent(
        self: &Arc<Self>,
        group: usize,
        t: &Arc<Replica>,
        e: u64,
        t_power_epoch: u64,
    ) -> Result<u64, VolumeError> {
        let first = self.source(group)?;
        let mut vouched = None;
        for r in self.members(group).iter().filter(|r| r.is_live()) {
            match self.versions(&r.link, e, 1, Reach::Responsive).await {
                Ok(v) if !v[0].suspect => {
                    vouched = Some(Arc::clone(r));
                    break;
                }
                _ => {}
            }
        }
        let offset = e * EXTENT_SIZE_BYTES;
        let len = (self.size() - offset).min(EXTENT_SIZE_BYTES) as u32;
        let copied = match &vouched {
            Some(s) => self.copy_range(s, t, offset, len).await,
            None => Err(VolumeError::Io(format!(
                "no live replica of group {group} can vouch for extent {e}"
            ))),
        };
        match copied {
            Ok(bytes) => Ok(bytes),
            Err(why) if self.vouches_for(t, e, t_power_epoch).await => {
                tracing::warn!(volume = %self.config.volume, group, extent = e, replica = %t.addr(), reason = %why, "the stale replica holds every acknowledged write of an extent the live ones cannot vouch for: its copy is kept");
                self.keep_target_copy(group, t, e).await
            }
            Err(_) if vouched.is_some() => copied,
            Err(_) => self.copy_range(&first, t, offset, len).await,
        }
    }

    /// Copies `[offset, offset + len)` (within one extent) from replica `s` to replica `t`,
    /// stamped with the extent's version on `s`; the caller holds the range. Returns the bytes
    /// copied: none when `s` never wrote the extent. Then a whole extent is reset to never
    /// written on `t` instead (what `t` holds there is an unacknowledged write or the wreck of
    /// a failed one), and a part of one is left alone, as resetting it would need the whole
    /// extent's range.
    ///
    /// The data passes through with the crc32c the source sent, unchecked here: the target
    /// checks it against the data it writes, so the copy is verified end to end and this
    /// client spends no pass over it (except on an all-zero extent, sent as a zeroing).
    pub(super) async fn copy_range(
        &self,
        s: &Replica,
        t: &Replica,
        offset: u64,
        len: u32,
    ) -> Result<u64, VolumeError> {
        let e = offset / EXTENT_SIZE_BYTES;
        assert_eq!(
            (offset + u64::from(len) - 1) / EXTENT_SIZE_BYTES,
            e,
            "a copy stays within one extent"
        );
        let version = self.versions(&s.link, e, 1, Reach::Responsive).await?[0].version;
        if version == WriteVersion::NONE {
            let (source, target) = (&s.background, &t.background);
            // The source never wrote the extent, so the target cannot hold a newer
            // acknowledged write of it.
            let extent_end = ((e + 1) * EXTENT_SIZE_BYTES).min(self.size());
            if offset == e * EXTENT_SIZE_BYTES && offset + u64::from(len) == extent_end {
                let reset = self.header(Op::Trim, offset, len, RECOVERY, WriteVersion::NONE);
                tracing::debug!(volume = %self.config.volume, extent = e, from = %source.addr(), to = %target.addr(), "resetting an extent the source never wrote");
                self.answered(
                    t.background_mutation(Request::new(reset)).await,
                    target.addr(),
                )?;
            }
            return Ok(0);
        }
        self.copy_stamped(s, t, offset, len, version).await
    }

    /// Copies `[offset, offset + len)` (within one extent) from replica `s` to replica `t`,
    /// stamped `version`; the caller holds the range. Returns the bytes copied. The copy goes
    /// as [`COPY_PIECE_BYTES`] requests, one after the other: the work of a copy reaches the
    /// replicas and this process in slices a client's request waits behind one of at most,
    /// not in one burst of an extent (the target's *suspect* mark is cleared once the pieces
    /// cover the extent, see `replica::intent`).
    pub(super) async fn copy_stamped(
        &self,
        s: &Replica,
        t: &Replica,
        offset: u64,
        len: u32,
        version: WriteVersion,
    ) -> Result<u64, VolumeError> {
        let mut at = 0;
        while at < len {
            let n = (len - at).min(COPY_PIECE_BYTES);
            self.copy_piece(s, t, offset + u64::from(at), n, version)
                .await?;
            at += n;
        }
        Ok(u64::from(len))
    }

    /// One request's worth of [`Inner::copy_stamped`].
    async fn copy_piece(
        &self,
        s: &Replica,
        t: &Replica,
        offset: u64,
        len: u32,
        version: WriteVersion,
    ) -> Result<(), VolumeError> {
        let e = offset / EXTENT_SIZE_BYTES;
        let (source, target) = (&s.background, &t.background);
        let read = self.header(Op::Read, offset, len, RECOVERY, WriteVersion::NONE);
        let (data, crc) = self.forwarded(source.call(Request::new(read)).await, source.addr())?;
        if data.len() != len as usize {
            return Err(VolumeError::Io(format!(
                "{}: read of {len} bytes returned {}",
                source.addr(),
                data.len()
            )));
        }
        // All zeros travels as a zeroing, which keeps the target thin. The target cannot check
        // a zeroing against the source's crc32c, so it is checked here.
        let write = if data.iter().all(|&b| b == 0) {
            if crate::wire::payload_crc(&data) != crc {
                return Err(VolumeError::Io(format!(
                    "{}: read of {len} bytes was damaged on the way",
                    source.addr()
                )));
            }
            let flags = FLAG_MAY_TRIM | RECOVERY;
            Request::new(self.header(Op::WriteZeroes, offset, len, flags, version))
        } else {
            let write = self.header(Op::Write, offset, len, RECOVERY, version);
            Request::write_with_crc(write, data, crc)
        };
        tracing::debug!(volume = %self.config.volume, extent = e, from = %source.addr(), to = %target.addr(), ?version, zeros = write.header.op == Op::WriteZeroes, "copying");
        self.answered(t.background_mutation(write).await, target.addr())?;
        Ok(())
    }
}

/// Bytes of one request of a copy (see [`Inner::copy_stamped`]).
const COPY_PIECE_BYTES: u32 = 512 * 1024;

// Keep the lock granularity and the extent size compatible: an extent is whole lock blocks.
const _: () = assert!(EXTENT_SIZE_BYTES.is_multiple_of(LOCK_BLOCK_BYTES));
