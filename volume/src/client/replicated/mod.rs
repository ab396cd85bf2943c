//! [`ReplicatedVolume`]: the [`BlockVolume`] over replica servers; see the module docs of
//! [`client`](super) for the rules it follows.
//!
//! Code map: this file sets a volume up, follows PG maps and holds what the IO paths share;
//! `members` is the runtime of each replica's [`Membership`] (failures, removals, waiting
//! for a group); `mutate` fans writes, trims, zeroings and flushes out; `read` reads with
//! failover; `resync` brings stale replicas back; `repair` rewrites bad blocks; `scrub` checks
//! every copy and repairs what it finds; `reconcile`
//! makes the live replicas agree when a new writer takes a volume over; `probe` finds a
//! replica that restarted while the volume was idle; `grow` follows a resize.
//!
//! [`Membership`]: crate::client::membership::Membership

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::store::range_lock::RangeLock;
use crate::volume::{BlockVolume, Extent, VolFuture, VolumeError, ZeroFlags};
use crate::wire::{
    ExtentVersion, FLAG_FUA, FLAG_MAY_TRIM, Op, Request, RequestHeader, VERSIONS_PER_REQUEST_MAX,
    VolumeId, WriteVersion, decode_extent_versions,
};

use super::link::{Link, Outcome, outcome};
use super::membership::Event;
use super::pool::ReplicaPool;
use super::{AclObserver, ActingSets, ClientConfig, ClientConfigError, IO_SIZE_MAX_BYTES};

mod allocation;
mod grow;
mod ledger;
mod members;
mod mutate;
mod probe;
mod read;
mod reconcile;
mod repair;
mod resync;
mod scrub;
mod vouch;

pub use grow::Growth;
use members::{Members, Replica};
pub use resync::{RESYNC_BYTES_PER_SEC_MAX, ResyncReport};
pub use scrub::ScrubTally;

/// Granularity of the client's range lock, in bytes (the store's checksummed block).
const LOCK_BLOCK_BYTES: u64 = 4096;

/// A replicated volume. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct ReplicatedVolume {
    inner: Arc<Inner>,
}

struct Inner {
    /// Its `size_bytes` is the size at construction; `size_bytes` below is the current one.
    config: ClientConfig,
    /// The volume's size: raised by [`ReplicatedVolume::grow`] while every group is held (see
    /// `group_locks`), never lowered.
    size_bytes: AtomicU64,
    /// Per group (PG), its current members.
    groups: Vec<RwLock<Members>>,
    /// Per group: woken whenever a member's state or the member list changes, for the writes
    /// that wait on the group.
    group_changed: Vec<Notify>,
    /// Links, copy budgets and repair slots, shared with the driver's other volumes.
    pool: Arc<ReplicaPool>,
    observer: Arc<dyn AclObserver>,
    next_seq: AtomicU64,
    /// Client reads and mutations started so far: a resync paces itself only while it moves.
    foreground_ios: AtomicU64,
    /// Zero while not fenced; otherwise the newer epoch a replica reported.
    fenced_by: AtomicU64,
    locks: Arc<RangeLock>,
    /// Per group: every mutation holds it shared while it runs, and a resync takes it
    /// exclusively to wait out the writes in flight, without stopping other groups' writes.
    /// tokio's lock is fair, so a waiting resync is not starved by a stream of writes. A grow
    /// holds them all, in ascending order like a mutation, so the size stays put while any
    /// one is held.
    group_locks: Vec<tokio::sync::RwLock<()>>,
}

impl ReplicatedVolume {
    /// Checks the configuration and sets up the groups over `pool`'s links. No connection
    /// is made until the first IO.
    pub fn new(
        config: ClientConfig,
        acting: ActingSets,
        observer: Arc<dyn AclObserver>,
        pool: Arc<ReplicaPool>,
    ) -> Result<ReplicatedVolume, ClientConfigError> {
        let ClientConfig {
            name: _,
            volume: _,
            size_bytes,
            attach_epoch,
            min_replicas,
            below_min_wait_ms,
            removal_wait_ms,
            resync_pace_bytes_per_sec: _,
        } = config;
        if size_bytes == 0 || !size_bytes.is_multiple_of(LOCK_BLOCK_BYTES) {
            return Err(ClientConfigError::Size(size_bytes));
        }
        if attach_epoch == 0 {
            return Err(ClientConfigError::Epoch);
        }
        if min_replicas == 0 {
            return Err(ClientConfigError::MinReplicas);
        }
        if below_min_wait_ms == 0 || removal_wait_ms == 0 {
            return Err(ClientConfigError::Limits);
        }
        // A group below `min_replicas` is attachable (its writes wait, then fail, until a
        // resync brings replicas back, and only an attached writer resyncs), but one with no
        // current replica has nothing to serve.
        // Every replica of a group, live ones first, then the stale ones (kept for resync).
        let all = |g: usize| -> Vec<(SocketAddr, bool)> {
            let stale = acting.stale.get(g).map(Vec::as_slice).unwrap_or_default();
            let live = acting.groups[g].iter().map(|&a| (a, false));
            live.chain(stale.iter().map(|&a| (a, true))).collect()
        };
        let distinct = |g: &[(SocketAddr, bool)]| {
            let mut s: Vec<SocketAddr> = g.iter().map(|(a, _)| *a).collect();
            s.sort();
            s.dedup();
            s.len() == g.len()
        };
        if acting.groups.is_empty()
            || acting.stale.len() > acting.groups.len()
            || (0..acting.groups.len()).any(|g| acting.groups[g].is_empty() || !distinct(&all(g)))
        {
            return Err(ClientConfigError::ActingSets);
        }
        let n = acting.groups.len();
        let groups = (0..n)
            .map(|g| {
                let members = all(g)
                    .into_iter()
                    .map(|(addr, stale)| Arc::new(Replica::new(&pool, addr, stale)))
                    .collect();
                RwLock::new(Arc::new(members))
            })
            .collect();
        let inner = Inner {
            config,
            size_bytes: AtomicU64::new(size_bytes),
            groups,
            group_changed: (0..n).map(|_| Notify::new()).collect(),
            pool,
            observer,
            next_seq: AtomicU64::new(1),
            foreground_ios: AtomicU64::new(0),
            fenced_by: AtomicU64::new(0),
            locks: Arc::new(RangeLock::default()),
            group_locks: (0..n).map(|_| tokio::sync::RwLock::new(())).collect(),
        };
        Ok(ReplicatedVolume {
            inner: Arc::new(inner),
        })
    }

    /// Follows a new PG map: each group's members become `acting`'s (live) and stale
    /// replicas. A replica already in the group keeps what this client knows of it (a replica
    /// it took out stays out until resynced), except that one the map lists as stale is out;
    /// a new one starts as the map says. Replicas no longer listed leave the group; IOs
    /// already under way finish on the members they started with.
    pub fn follow(&self, acting: &ActingSets) -> Result<(), ClientConfigError> {
        let inner = &self.inner;
        if acting.groups.len() != inner.groups.len() || acting.stale.len() > acting.groups.len() {
            return Err(ClientConfigError::ActingSets);
        }
        for (g, listed) in acting.groups.iter().enumerate() {
            let stale = acting.stale.get(g).map(Vec::as_slice).unwrap_or_default();
            let old = inner.members(g);
            let keep = |addr: SocketAddr, stale: bool| match old.iter().find(|r| r.addr() == addr) {
                Some(r) => {
                    // The metadata service's word that a replica is stale wins over ours: it
                    // must serve no read until a resync brings it back. (The reverse, a
                    // replica listed live that we hold stale, waits for our resync.)
                    if stale && !r.is_stale() {
                        tracing::warn!(volume = %inner.config.volume, group = g, replica = %addr, "the PG map lists a replica as stale that this client held in the acting set; it will be resynced");
                        inner.event(g, r, Event::ListedStale);
                    }
                    Arc::clone(r)
                }
                None => Arc::new(Replica::new(&inner.pool, addr, stale)),
            };
            let members: Vec<Arc<Replica>> = listed
                .iter()
                .map(|&a| keep(a, false))
                .chain(stale.iter().map(|&a| keep(a, true)))
                .collect();
            let changed = members.len() != old.len()
                || members
                    .iter()
                    .zip(old.iter())
                    .any(|(a, b)| !Arc::ptr_eq(a, b));
            if changed {
                tracing::info!(volume = %inner.config.volume, group = g, replicas = ?members.iter().map(|r| r.addr()).collect::<Vec<_>>(), "group membership changed");
                *inner.groups[g].write().expect("group members") = Arc::new(members);
                inner.group_changed[g].notify_waiters();
            }
        }
        Ok(())
    }

    /// The newer attach epoch that fenced this volume, if one did.
    pub fn fenced_by(&self) -> Option<u64> {
        self.inner.fenced_by()
    }

    /// Replicas of `group` still in its acting set, in preference order.
    pub fn live_replicas(&self, group: usize) -> Vec<SocketAddr> {
        self.inner
            .members(group)
            .iter()
            .filter(|r| r.is_live())
            .map(|r| r.addr())
            .collect()
    }

    /// Asks `replica` for the versions of extents `first..first + count`, each with whether the
    /// replica can vouch for its contents (for resync). A probe:
    /// it also reaches a replica that timed out before, and an answer makes it usable again.
    pub async fn extent_versions(
        &self,
        replica: SocketAddr,
        first: u64,
        count: u32,
    ) -> Result<Vec<ExtentVersion>, VolumeError> {
        assert!(count <= VERSIONS_PER_REQUEST_MAX);
        let link = self.inner.link_of(replica)?;
        self.inner.versions(&link, first, count, Reach::Probe).await
    }
}

/// Whether a call may go to a replica that timed out before (see [`Link::probe`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    Responsive,
    Probe,
}

impl Inner {
    /// Versions of extents `first..first + count` on the replica behind `link`.
    async fn versions(
        &self,
        link: &Link,
        first: u64,
        count: u32,
        reach: Reach,
    ) -> Result<Vec<ExtentVersion>, VolumeError> {
        assert!(count <= VERSIONS_PER_REQUEST_MAX);
        let req =
            Request::new(self.header(Op::GetExtentVersions, first, count, 0, WriteVersion::NONE));
        let reply = match reach {
            Reach::Responsive => link.call(req).await,
            Reach::Probe => link.probe(req).await,
        };
        let payload = self.answer(reply, link.addr())?;
        decode_extent_versions(&payload)
            .filter(|v| v.len() == count as usize)
            .ok_or_else(|| VolumeError::Io(format!("{}: malformed versions reply", link.addr())))
    }

    /// The payload of an acked reply, or the reason it was not acked.
    fn answer(
        &self,
        reply: Result<crate::wire::Reply, crate::client::LinkError>,
        from: SocketAddr,
    ) -> Result<Bytes, VolumeError> {
        self.answered(outcome(reply), from)
    }

    /// [`Inner::answer`] for an outcome.
    fn answered(&self, outcome: Outcome, from: SocketAddr) -> Result<Bytes, VolumeError> {
        match outcome {
            Outcome::Acked(payload) => Ok(payload),
            Outcome::Fenced(current) => Err(VolumeError::Io(format!(
                "{from}: fenced by attach epoch {current}"
            ))),
            Outcome::Corrupt => Err(VolumeError::Io(format!("{from}: checksum failure"))),
            Outcome::Failed(why) => Err(VolumeError::Io(format!("{from}: {why}"))),
        }
    }

    /// The payload of a successful reply with the crc32c its header carries, not checked: for
    /// data passed on to another replica, which checks it. A failure reads as in `answer`.
    fn forwarded(
        &self,
        reply: Result<crate::wire::Reply, crate::client::LinkError>,
        from: SocketAddr,
    ) -> Result<(Bytes, u32), VolumeError> {
        match reply {
            Ok(r) if r.header.status == crate::wire::Status::Ok => {
                Ok((r.payload, r.header.payload_crc))
            }
            failed => match self.answer(failed, from) {
                Err(e) => Err(e),
                Ok(_) => unreachable!("only a reply with status OK is answered with its payload"),
            },
        }
    }

    fn header(&self, op: Op, offset: u64, len: u32, flags: u8, v: WriteVersion) -> RequestHeader {
        RequestHeader {
            op,
            flags,
            request_id: 0,
            volume: self.config.volume,
            offset,
            len,
            payload_crc: 0,
            attach_epoch: self.config.attach_epoch,
            version: v,
        }
    }

    fn volume(&self) -> VolumeId {
        self.config.volume
    }

    fn check_open(&self) -> Result<(), VolumeError> {
        match self.fenced_by.load(Ordering::Acquire) {
            0 => Ok(()),
            current => Err(VolumeError::Io(format!(
                "volume {} is fenced: attach epoch {} was superseded by {current}",
                self.config.name, self.config.attach_epoch
            ))),
        }
    }

    /// The volume's current size.
    fn size(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(VolumeError::OutOfRange { offset, len, size }),
        }
    }

    fn fenced_by(&self) -> Option<u64> {
        match self.fenced_by.load(Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }

    fn fence(&self, current: u64) -> VolumeError {
        if self.fenced_by.swap(current, Ordering::AcqRel) == 0 {
            self.observer
                .fenced(self.volume(), self.config.attach_epoch, current);
        }
        self.check_open().expect_err("just fenced")
    }

    /// The link to `replica`, which must be a member of some group.
    fn link_of(&self, replica: SocketAddr) -> Result<Arc<Link>, VolumeError> {
        (0..self.groups.len())
            .find_map(|g| {
                let members = self.members(g);
                members
                    .iter()
                    .find(|r| r.addr() == replica)
                    .map(|r| Arc::clone(&r.link))
            })
            .ok_or_else(|| VolumeError::Io(format!("{replica} is not a replica of this volume")))
    }

    /// The current members of `group`.
    fn members(&self, group: usize) -> Members {
        Arc::clone(&self.groups[group].read().expect("group members"))
    }

    /// The group of extent `extent`.
    fn group_of(&self, extent: u64) -> usize {
        super::pg_of(self.config.volume, extent, self.groups.len())
    }
}

impl BlockVolume for ReplicatedVolume {
    fn name(&self) -> &str {
        &self.inner.config.name
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn max_io_bytes(&self) -> u32 {
        IO_SIZE_MAX_BYTES
    }

    fn read(&self, offset: u64, len: u32) -> VolFuture<Bytes> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let timed = inner.pool.pace().client_io();
            let read = Arc::clone(&inner).read(offset, len).await;
            if let Some(io) = timed {
                io.done();
            }
            read
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolFuture<()> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let timed = inner.pool.pace().client_io();
            if data.len() > IO_SIZE_MAX_BYTES as usize {
                return Err(VolumeError::TooLarge {
                    len: data.len() as u64,
                    max: IO_SIZE_MAX_BYTES.into(),
                });
            }
            let len = data.len() as u64;
            let flags = if fua { FLAG_FUA } else { 0 };
            let written = Arc::clone(&inner)
                .mutate(offset, len, move |inner, p, v| {
                    let at = p.at as usize;
                    let payload = data.slice(at..at + p.len as usize);
                    Request::write(inner.header(Op::Write, p.offset, p.len, flags, v), payload)
                })
                .await;
            if let Some(io) = timed {
                io.done();
            }
            written
        })
    }

    fn flush(&self) -> VolFuture<()> {
        Box::pin(Arc::clone(&self.inner).flush())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> VolFuture<()> {
        let flags = if fua { FLAG_FUA } else { 0 };
        Box::pin(
            Arc::clone(&self.inner).mutate(offset, len, move |inner, p, v| {
                Request::new(inner.header(Op::Trim, p.offset, p.len, flags, v))
            }),
        )
    }

    fn write_zeroes(&self, offset: u64, len: u64, zf: ZeroFlags) -> VolFuture<()> {
        // Zeroing is a metadata operation on every replica, so a fast zero is always possible.
        let flags = if zf.fua { FLAG_FUA } else { 0 } | if zf.may_trim { FLAG_MAY_TRIM } else { 0 };
        Box::pin(
            Arc::clone(&self.inner).mutate(offset, len, move |inner, p, v| {
                Request::new(inner.header(Op::WriteZeroes, p.offset, p.len, flags, v))
            }),
        )
    }

    fn block_status(&self, offset: u64, len: u64) -> VolFuture<Vec<Extent>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            inner.check_open()?;
            if len == 0 {
                return Err(VolumeError::OutOfRange {
                    offset,
                    len,
                    size: inner.size(),
                });
            }
            inner.check_range(offset, len)?;
            Ok(inner.block_status(offset, len).await)
        })
    }
}
