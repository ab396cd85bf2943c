//! [`ReplicatedVolume`]: the [`BlockVolume`] over replica servers; see the module docs of
//! [`client`](super) for the rules it follows.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use crate::store::range_lock::RangeLock;
use crate::volume::{BlockVolume, Extent, ExtentState, VolFuture, VolumeError, ZeroFlags};
use crate::wire::{
    FLAG_FUA, FLAG_MAY_TRIM, Op, Request, RequestHeader, VERSIONS_PER_REQUEST_MAX, VolumeId,
    WriteVersion, decode_versions,
};

use super::bounded::{PieceFuture, run_bounded};
use super::link::{Link, Outcome, outcome};
use super::split::{Piece, split};
use super::tally::{Tally, Verdict};
use super::{
    AclObserver, ActingSets, ClientConfig, ClientConfigError, IO_SIZE_MAX_BYTES, ReplicaFailure,
};

mod repair;
mod resync;

pub use resync::{RESYNC_BYTES_PER_SEC_MAX, ResyncReport};

/// Granularity of the client's range lock, in bytes (the store's checksummed block).
const LOCK_BLOCK_BYTES: u64 = 4096;
/// How often a write waiting below `min_replicas` looks again, in milliseconds.
const BELOW_MIN_POLL_MS: u64 = 50;

/// How one replica's part in a mutation ended, as the group's tally counts it.
enum Answer {
    Acked,
    Fenced(u64),
    /// A live replica failed; `true` once it has left the acting set.
    Failed(bool),
    /// A replica catching up answered; it does not count towards the acknowledgement.
    Aside,
}

/// A replicated volume. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct ReplicatedVolume {
    inner: Arc<Inner>,
}

/// The replicas of one group at one moment. Swapped whole when the PG map changes; an IO works
/// on the snapshot it started with.
type Members = Arc<Vec<Arc<Replica>>>;

struct Inner {
    config: ClientConfig,
    /// Per group (PG), its current members.
    groups: Vec<RwLock<Members>>,
    /// One link per replica address, shared by every group the replica serves.
    links: Mutex<HashMap<SocketAddr, Arc<Link>>>,
    observer: Arc<dyn AclObserver>,
    next_seq: AtomicU64,
    /// Client reads and mutations started so far: a resync paces itself only while it moves.
    foreground_ios: AtomicU64,
    /// Zero while not fenced; otherwise the newer epoch a replica reported.
    fenced_by: AtomicU64,
    locks: Arc<RangeLock>,
    /// Per group: every mutation holds it shared while it runs, and a resync takes it
    /// exclusively to wait out the writes in flight, without stopping other groups' writes.
    /// tokio's lock is fair, so a waiting resync is not starved by a stream of writes.
    group_locks: Vec<tokio::sync::RwLock<()>>,
    /// Extent copies in flight across every resync of the volume: bounds the buffers a rebuild
    /// holds however many groups resync at once.
    copy_slots: tokio::sync::Semaphore,
}

/// Where one write of a group goes; see [`Inner::writable`].
struct Writable {
    live: Vec<Arc<Replica>>,
    catching_up: Vec<Arc<Replica>>,
}

/// Why a group cannot take a write.
enum Blocked {
    /// A failed replica could not be removed from the acting set: writing without it would
    /// acknowledge what a member of the acting set missed.
    Stuck(String),
    /// Fewer than `min_replicas` live replicas; a resync may bring one back.
    BelowMin(String),
}

impl Blocked {
    fn into_error(self) -> VolumeError {
        let (Blocked::Stuck(why) | Blocked::BelowMin(why)) = self;
        VolumeError::Io(why)
    }
}

/// One replica of one group: in the acting set, or out of it (stale) until resynced.
struct Replica {
    link: Arc<Link>,
    /// The current removal cell. Unset while the replica is in the acting set. Set once it
    /// failed: `true` when the observer removed it, `false` when the removal failed (the group
    /// can then take no writes, since the replica is still in the acting set but cannot be
    /// written). A resynced replica gets a fresh, unset cell.
    removal: Mutex<Arc<OnceCell<bool>>>,
    /// For a stale replica under resync: one of the `CATCH_UP_*` states. While it catches up it
    /// gets every write of the group, but serves no read and does not count towards
    /// `min_replicas`.
    catch_up: AtomicU8,
}

/// Not being resynced: gets no writes.
const CATCH_UP_OFF: u8 = 0;
/// Being resynced: gets every write, and so far has acknowledged every one.
const CATCH_UP_ON: u8 = 1;
/// Being resynced, but a write to it failed: this resync cannot make it current.
const CATCH_UP_MISSED: u8 = 2;

impl Replica {
    fn new(link: Arc<Link>, stale: bool) -> Replica {
        let cell = match stale {
            true => OnceCell::new_with(Some(true)),
            false => OnceCell::new(),
        };
        Replica {
            link,
            removal: Mutex::new(Arc::new(cell)),
            catch_up: AtomicU8::new(CATCH_UP_OFF),
        }
    }
    fn removal(&self) -> Arc<OnceCell<bool>> {
        Arc::clone(&self.removal.lock().expect("replica removal cell"))
    }
    fn live(&self) -> bool {
        self.removal().get().is_none()
    }
    fn stale(&self) -> bool {
        self.removal().get() == Some(&true)
    }
    fn stuck(&self) -> bool {
        self.removal().get() == Some(&false)
    }
    /// Out of the acting set, as the metadata service already records it.
    fn demote(&self) {
        *self.removal.lock().expect("replica removal cell") =
            Arc::new(OnceCell::new_with(Some(true)));
    }
    /// Back into the acting set, after a resync.
    fn restore(&self) {
        *self.removal.lock().expect("replica removal cell") = Arc::new(OnceCell::new());
        self.catch_up.store(CATCH_UP_OFF, Ordering::Release);
    }
    /// Whether writes of the group go to this stale replica too (see [`Replica::catch_up`]).
    fn catching_up(&self) -> bool {
        self.catch_up.load(Ordering::Acquire) == CATCH_UP_ON
    }
    /// A write or flush sent while it caught up failed: its resync cannot succeed.
    fn miss(&self) {
        if self
            .catch_up
            .compare_exchange(
                CATCH_UP_ON,
                CATCH_UP_MISSED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            tracing::warn!(replica = %self.link.addr(), "a replica catching up missed a write or flush; its resync will start over");
        }
    }
}

impl ReplicatedVolume {
    /// Checks the configuration and sets up one link per distinct replica address. No
    /// connection is made until the first IO.
    pub fn new(
        config: ClientConfig,
        acting: ActingSets,
        observer: Arc<dyn AclObserver>,
    ) -> Result<ReplicatedVolume, ClientConfigError> {
        let ClientConfig {
            name: _,
            volume: _,
            size_bytes,
            attach_epoch,
            min_replicas,
            request_timeout_ms,
            requests_in_flight_per_replica_max,
            below_min_wait_ms: _,
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
        if request_timeout_ms == 0 || requests_in_flight_per_replica_max == 0 {
            return Err(ClientConfigError::Limits);
        }
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
            || (0..acting.groups.len())
                .any(|g| acting.groups[g].len() < min_replicas || !distinct(&all(g)))
        {
            return Err(ClientConfigError::ActingSets);
        }
        let inner = Inner {
            config,
            groups: (0..acting.groups.len())
                .map(|_| RwLock::new(Arc::new(Vec::new())))
                .collect(),
            links: Mutex::new(HashMap::new()),
            observer,
            next_seq: AtomicU64::new(1),
            foreground_ios: AtomicU64::new(0),
            fenced_by: AtomicU64::new(0),
            locks: Arc::new(RangeLock::default()),
            group_locks: (0..acting.groups.len())
                .map(|_| tokio::sync::RwLock::new(()))
                .collect(),
            copy_slots: tokio::sync::Semaphore::new(resync::COPIES_IN_FLIGHT_MAX),
        };
        for g in 0..acting.groups.len() {
            let members = all(g)
                .into_iter()
                .map(|(addr, stale)| Arc::new(Replica::new(inner.link_to(addr), stale)))
                .collect();
            *inner.groups[g].write().expect("group members") = Arc::new(members);
        }
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
            let keep = |addr: SocketAddr, stale: bool| match old
                .iter()
                .find(|r| r.link.addr() == addr)
            {
                Some(r) => {
                    // The metadata service's word that a replica is stale wins over ours: it
                    // must serve no read until a resync brings it back. (The reverse, a
                    // replica listed live that we hold stale, waits for our resync.)
                    if stale && r.live() {
                        tracing::warn!(volume = %inner.config.volume, group = g, replica = %addr, "the PG map lists a replica as stale that this client held live; it will be resynced");
                        r.demote();
                    }
                    Arc::clone(r)
                }
                None => Arc::new(Replica::new(inner.link_to(addr), stale)),
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
                tracing::info!(volume = %inner.config.volume, group = g, replicas = ?members.iter().map(|r| r.link.addr()).collect::<Vec<_>>(), "group membership changed");
                *inner.groups[g].write().expect("group members") = Arc::new(members);
            }
        }
        Ok(())
    }

    /// The newer attach epoch that fenced this volume, if one did.
    pub fn fenced_by(&self) -> Option<u64> {
        match self.inner.fenced_by.load(Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }

    /// Replicas of `group` still in its acting set, in preference order.
    pub fn live_replicas(&self, group: usize) -> Vec<SocketAddr> {
        self.inner
            .members(group)
            .iter()
            .filter(|r| r.live())
            .map(|r| r.link.addr())
            .collect()
    }

    /// Asks `replica` for the versions of extents `first..first + count` (for resync). A probe:
    /// it also reaches a replica that timed out before, and an answer makes it usable again.
    pub async fn extent_versions(
        &self,
        replica: SocketAddr,
        first: u64,
        count: u32,
    ) -> Result<Vec<WriteVersion>, VolumeError> {
        assert!(count <= VERSIONS_PER_REQUEST_MAX);
        let link = (0..self.inner.groups.len())
            .find_map(|g| {
                let members = self.inner.members(g);
                members
                    .iter()
                    .find(|r| r.link.addr() == replica)
                    .map(|r| Arc::clone(&r.link))
            })
            .ok_or_else(|| VolumeError::Io(format!("{replica} is not a replica of this volume")))?;
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
    ) -> Result<Vec<WriteVersion>, VolumeError> {
        assert!(count <= VERSIONS_PER_REQUEST_MAX);
        let req =
            Request::new(self.header(Op::GetExtentVersions, first, count, 0, WriteVersion::NONE));
        let reply = match reach {
            Reach::Responsive => link.call(req).await,
            Reach::Probe => link.probe(req).await,
        };
        let payload = self.answer(reply, link.addr())?;
        decode_versions(&payload)
            .filter(|v| v.len() == count as usize)
            .ok_or_else(|| VolumeError::Io(format!("{}: malformed versions reply", link.addr())))
    }

    /// The payload of an acked reply, or the reason it was not acked.
    fn answer(
        &self,
        reply: Result<crate::wire::Reply, super::LinkError>,
        from: SocketAddr,
    ) -> Result<Bytes, VolumeError> {
        match outcome(reply) {
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
        reply: Result<crate::wire::Reply, super::LinkError>,
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

    fn check_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.config.size_bytes => Ok(()),
            _ => Err(VolumeError::OutOfRange {
                offset,
                len,
                size: self.config.size_bytes,
            }),
        }
    }

    fn fence(&self, current: u64) -> VolumeError {
        if self.fenced_by.swap(current, Ordering::AcqRel) == 0 {
            self.observer
                .fenced(self.volume(), self.config.attach_epoch, current);
        }
        self.check_open().expect_err("just fenced")
    }

    /// The current members of `group`.
    fn members(&self, group: usize) -> Members {
        Arc::clone(&self.groups[group].read().expect("group members"))
    }

    /// The group of extent `extent`.
    fn group_of(&self, extent: u64) -> usize {
        super::pg_of(self.config.volume, extent, self.groups.len())
    }

    /// The link to `addr`, made on first use.
    fn link_to(&self, addr: SocketAddr) -> Arc<Link> {
        let mut links = self.links.lock().expect("links");
        let link = links.entry(addr).or_insert_with(|| {
            Arc::new(Link::new(
                addr,
                Duration::from_millis(self.config.request_timeout_ms),
                self.config.requests_in_flight_per_replica_max,
            ))
        });
        Arc::clone(link)
    }

    /// Reports `replica` of `group` failed and waits for its removal; `true` once it is out
    /// of the acting set. Concurrent reporters of the same replica share one report.
    async fn remove(&self, group: usize, replica: &Replica, reason: String) -> bool {
        let failure = ReplicaFailure {
            volume: self.volume(),
            group,
            replica: replica.link.addr(),
            reason,
        };
        *replica
            .removal()
            .get_or_init(|| async {
                tracing::warn!(volume = %failure.volume, group, replica = %failure.replica, reason = %failure.reason, "replica failed");
                match self.observer.replica_failed(failure.clone()).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(volume = %failure.volume, group, replica = %failure.replica, error = %e, "replica could not be removed from the acting set");
                        false
                    }
                }
            })
            .await
    }

    /// The replicas a write of `group` goes to: the live ones, which must all hold it before
    /// it is acknowledged, and those catching up, which get it but do not count towards the
    /// acknowledgement. Or why the group cannot take a write. One snapshot of the members, so a
    /// replica that catches up cannot miss a write through a concurrent map change.
    fn writable(&self, group: usize) -> Result<Writable, VolumeError> {
        let replicas = self.members(group);
        if let Some(blocked) = self.blocked(group, &replicas) {
            return Err(blocked.into_error());
        }
        Ok(Writable {
            live: replicas.iter().filter(|r| r.live()).cloned().collect(),
            catching_up: replicas
                .iter()
                .filter(|r| r.catching_up())
                .cloned()
                .collect(),
        })
    }

    /// Why `group`, with members `replicas`, cannot take a write now, if it cannot.
    fn blocked(&self, group: usize, replicas: &[Arc<Replica>]) -> Option<Blocked> {
        if let Some(r) = replicas.iter().find(|r| r.stuck()) {
            return Some(Blocked::Stuck(format!(
                "replica {} failed and could not be removed from group {group}",
                r.link.addr()
            )));
        }
        let live = replicas.iter().filter(|r| r.live()).count();
        (live < self.config.min_replicas).then(|| {
            Blocked::BelowMin(format!(
                "group {group} has {live} live replicas, fewer than min_replicas {}",
                self.config.min_replicas
            ))
        })
    }

    /// Waits, up to `below_min_wait_ms`, while `group` has fewer than `min_replicas` live
    /// replicas; any other reason it cannot be written fails at once.
    async fn wait_writable(&self, group: usize) -> Result<(), VolumeError> {
        let deadline =
            std::time::Instant::now() + Duration::from_millis(self.config.below_min_wait_ms);
        loop {
            match self.blocked(group, &self.members(group)) {
                None => return Ok(()),
                Some(Blocked::BelowMin(_)) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(BELOW_MIN_POLL_MS)).await;
                }
                Some(blocked) => return Err(blocked.into_error()),
            }
        }
    }

    /// Sends one mutation to every live replica of `group` and every one catching up;
    /// succeeds when every live replica that did not ack has been removed and at least
    /// `min_replicas` acked. A replica catching up that fails it only ends its resync.
    async fn mutate_group(self: Arc<Self>, group: usize, req: Request) -> Result<(), VolumeError> {
        let Writable { live, catching_up } = self.writable(group)?;
        // The calls run concurrently inside this task, each with the removal of its replica if
        // it fails: a removal is a Raft round trip, and while one is awaited the other calls
        // must go on being polled (their link timeouts run meanwhile).
        let inner: &Inner = &self;
        let mut calls: FuturesUnordered<_> = live
            .into_iter()
            .map(|r| (r, true))
            .chain(catching_up.into_iter().map(|r| (r, false)))
            .map(|(replica, counts)| {
                let req = req.clone();
                async move {
                    match outcome(replica.link.call(req).await) {
                        Outcome::Fenced(current) => Answer::Fenced(current),
                        Outcome::Acked(_) if counts => Answer::Acked,
                        Outcome::Acked(_) => Answer::Aside,
                        // A replica catching up that misses the write only ends its resync.
                        Outcome::Corrupt | Outcome::Failed(_) if !counts => {
                            replica.miss();
                            Answer::Aside
                        }
                        Outcome::Corrupt => {
                            let why = "checksum failure on the replica, or a damaged reply";
                            Answer::Failed(inner.remove(group, &replica, why.to_owned()).await)
                        }
                        Outcome::Failed(why) => {
                            Answer::Failed(inner.remove(group, &replica, why).await)
                        }
                    }
                }
            })
            .collect();
        let mut tally = Tally::default();
        while let Some(answer) = calls.next().await {
            match answer {
                Answer::Acked => tally.acked(),
                Answer::Fenced(current) => tally.fenced(current),
                Answer::Failed(removed) => tally.failed(removed),
                Answer::Aside => {}
            }
        }
        match tally.verdict(self.config.min_replicas) {
            Verdict::Done => {}
            Verdict::Fenced { current } => return Err(self.fence(current)),
            Verdict::Unremoved => {
                return Err(VolumeError::Io(format!(
                    "a replica of group {group} failed and could not be removed from its acting set"
                )));
            }
            Verdict::BelowMin { acked } => {
                return Err(VolumeError::Io(format!(
                    "{:?} at {} reached {acked} replicas of group {group}, fewer than min_replicas {}",
                    req.header.op, req.header.offset, self.config.min_replicas
                )));
            }
        }
        Ok(())
    }

    /// Runs a mutation of `[offset, offset + len)`: takes the range, stamps each piece with the
    /// next version, and fans the pieces out.
    async fn mutate(
        self: Arc<Self>,
        offset: u64,
        len: u64,
        build: impl Fn(&Inner, Piece, WriteVersion) -> Request,
    ) -> Result<(), VolumeError> {
        self.check_open()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.foreground_ios.fetch_add(1, Ordering::Relaxed);
        // Wait for groups below min_replicas before taking any lock: a resync that would
        // bring a replica back needs its group held still at its end.
        let mut groups: Vec<usize> = split(offset, len)
            .map(|p| self.group_of(p.extent))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        for &group in &groups {
            self.wait_writable(group).await?;
        }
        // Shared holds of the groups, in ascending order, so a resync can wait out every write
        // of its group (see `Inner::group_locks`); then the exclusive range.
        let mut held_groups = Vec::with_capacity(groups.len());
        for &group in &groups {
            held_groups.push(self.group_locks[group].read().await);
        }
        let _range = self
            .locks
            .lock(
                offset / LOCK_BLOCK_BYTES,
                (offset + len).div_ceil(LOCK_BLOCK_BYTES),
            )
            .await;
        let mut tasks: Vec<PieceFuture<()>> = Vec::new();
        for piece in split(offset, len) {
            let version = WriteVersion {
                epoch: self.config.attach_epoch,
                seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            };
            let req = build(&self, piece, version);
            let group = self.group_of(piece.extent);
            tasks.push(Box::pin(Arc::clone(&self).mutate_group(group, req)));
        }
        run_bounded(tasks).await.map(|_| ())
    }

    /// Reads one piece from the first live replica that returns good data.
    async fn read_piece(self: Arc<Self>, piece: Piece) -> Result<Bytes, VolumeError> {
        let group = self.group_of(piece.extent);
        let header = self.header(Op::Read, piece.offset, piece.len, 0, WriteVersion::NONE);
        let mut tried = Vec::new();
        let mut corrupt: Vec<Arc<Replica>> = Vec::new();
        for replica in self.members(group).iter() {
            if !replica.live() {
                continue;
            }
            let addr = replica.link.addr();
            match outcome(replica.link.call(Request::new(header)).await) {
                Outcome::Acked(data) if data.len() == piece.len as usize => {
                    for bad in corrupt {
                        let inner = Arc::clone(&self);
                        let good = Arc::clone(replica);
                        tokio::spawn(inner.repair(bad, good, piece.offset, piece.len));
                    }
                    return Ok(data);
                }
                Outcome::Acked(data) => {
                    let why = format!("read of {} bytes returned {}", piece.len, data.len());
                    self.remove(group, replica, why.clone()).await;
                    tried.push(format!("{addr}: {why}"));
                }
                Outcome::Fenced(current) => return Err(self.fence(current)),
                Outcome::Corrupt => {
                    self.observer
                        .block_corrupt(self.volume(), addr, piece.offset);
                    corrupt.push(Arc::clone(replica));
                    tried.push(format!("{addr}: checksum failure"));
                }
                Outcome::Failed(why) => {
                    self.remove(group, replica, why.clone()).await;
                    tried.push(format!("{addr}: {why}"));
                }
            }
        }
        Err(VolumeError::Io(format!(
            "no replica of group {group} could serve {}+{}: [{}]",
            piece.offset,
            piece.len,
            tried.join("; ")
        )))
    }

    async fn read(self: Arc<Self>, offset: u64, len: u32) -> Result<Bytes, VolumeError> {
        self.check_open()?;
        self.foreground_ios.fetch_add(1, Ordering::Relaxed);
        if len > IO_SIZE_MAX_BYTES {
            return Err(VolumeError::TooLarge {
                len: len.into(),
                max: IO_SIZE_MAX_BYTES.into(),
            });
        }
        self.check_range(offset, len.into())?;
        let tasks: Vec<PieceFuture<Bytes>> = split(offset, len.into())
            .map(|p| Box::pin(Arc::clone(&self).read_piece(p)) as PieceFuture<Bytes>)
            .collect();
        let mut pieces = run_bounded(tasks).await?;
        if pieces.len() == 1 {
            return Ok(pieces.pop().expect("one piece"));
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for p in pieces {
            out.extend_from_slice(&p);
        }
        assert_eq!(out.len(), len as usize, "pieces tile the read");
        Ok(out.freeze())
    }

    /// Flushes every live replica of every group, each distinct replica once. Replicas that
    /// catch up are flushed too, so that what a client flushed is durable on them as well once
    /// their resync ends; one that fails only ends its resync.
    async fn flush(self: Arc<Self>) -> Result<(), VolumeError> {
        self.check_open()?;
        let mut members: BTreeMap<SocketAddr, Vec<(usize, Arc<Replica>)>> = BTreeMap::new();
        for g in 0..self.groups.len() {
            for r in self
                .members(g)
                .iter()
                .filter(|r| r.live() || r.catching_up())
            {
                members
                    .entry(r.link.addr())
                    .or_default()
                    .push((g, Arc::clone(r)));
            }
        }
        let mut calls = JoinSet::new();
        for (addr, places) in members {
            let link = Arc::clone(&places[0].1.link);
            let req = Request::new(self.header(Op::Flush, 0, 0, 0, WriteVersion::NONE));
            calls.spawn(async move { (addr, places, outcome(link.call(req).await)) });
        }
        let mut fenced = None;
        while let Some(joined) = calls.join_next().await {
            let (_, places, result) =
                joined.map_err(|e| VolumeError::Io(format!("flush call: {e}")))?;
            match result {
                Outcome::Acked(_) => {}
                Outcome::Fenced(current) => fenced = Some(current),
                Outcome::Corrupt | Outcome::Failed(_) => {
                    let why = match result {
                        Outcome::Failed(why) => why,
                        _ => "damaged flush reply".to_owned(),
                    };
                    let (catching_up, live): (Vec<_>, Vec<_>) =
                        places.into_iter().partition(|(_, r)| !r.live());
                    for (_, replica) in catching_up {
                        replica.miss();
                    }
                    // Concurrently: a dead replica is in many groups, and each removal is a
                    // round trip to the metadata service.
                    let mut removals = JoinSet::new();
                    for (g, replica) in live {
                        let inner = Arc::clone(&self);
                        let why = why.clone();
                        removals.spawn(async move { inner.remove(g, &replica, why).await });
                    }
                    while removals.join_next().await.is_some() {}
                }
            }
        }
        if let Some(current) = fenced {
            return Err(self.fence(current));
        }
        for g in 0..self.groups.len() {
            if let Some(blocked) = self.blocked(g, &self.members(g)) {
                return Err(blocked.into_error());
            }
        }
        Ok(())
    }
}

impl BlockVolume for ReplicatedVolume {
    fn name(&self) -> &str {
        &self.inner.config.name
    }

    fn size(&self) -> u64 {
        self.inner.config.size_bytes
    }

    fn max_io_bytes(&self) -> u32 {
        IO_SIZE_MAX_BYTES
    }

    fn read(&self, offset: u64, len: u32) -> VolFuture<Bytes> {
        Box::pin(Arc::clone(&self.inner).read(offset, len))
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolFuture<()> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            if data.len() > IO_SIZE_MAX_BYTES as usize {
                return Err(VolumeError::TooLarge {
                    len: data.len() as u64,
                    max: IO_SIZE_MAX_BYTES.into(),
                });
            }
            let len = data.len() as u64;
            let flags = if fua { FLAG_FUA } else { 0 };
            inner
                .mutate(offset, len, move |inner, p, v| {
                    let at = p.at as usize;
                    let payload = data.slice(at..at + p.len as usize);
                    Request::write(inner.header(Op::Write, p.offset, p.len, flags, v), payload)
                })
                .await
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
        // The protocol has no block status yet: report the range as allocated data, which is
        // always a correct (if unhelpful) answer.
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            inner.check_open()?;
            if len == 0 {
                return Err(VolumeError::OutOfRange {
                    offset,
                    len,
                    size: inner.config.size_bytes,
                });
            }
            inner.check_range(offset, len)?;
            Ok(vec![Extent {
                len,
                state: ExtentState {
                    hole: false,
                    zero: false,
                },
            }])
        })
    }
}
