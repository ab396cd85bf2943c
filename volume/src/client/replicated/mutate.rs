//! Writes, trims, zeroings and flushes: fanned out to every live replica of a group (and to
//! those catching up), acknowledged by the rule in [`tally`](crate::client::tally).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::client::bounded::{PieceFuture, run_bounded};
use crate::client::link::Outcome;
use crate::client::split::{Piece, split};
use crate::client::tally::{Tally, Verdict};
use crate::volume::VolumeError;
use crate::wire::{Op, Request, WriteVersion};

use super::members::{Replica, Writable, flush_places};
use super::{Inner, LOCK_BLOCK_BYTES};

/// How one replica's part in a mutation ended, as the group's tally counts it.
enum Answer {
    Acked(Arc<Replica>),
    Fenced(u64),
    /// A live replica failed; `true` once it has left the acting set.
    Failed(bool),
    /// A replica catching up took it; it does not count towards the acknowledgement.
    Aside(Arc<Replica>),
    /// A replica catching up failed it: its resync ends.
    AsideFailed,
}

impl Inner {
    /// Sends one mutation to every live replica of `group` and every one catching up;
    /// succeeds when every live replica that did not ack has left the acting set and at least
    /// `min_replicas` acked. A replica catching up that fails it only ends its resync.
    async fn mutate_group(self: Arc<Self>, group: usize, req: Request) -> Result<(), VolumeError> {
        let Writable { live, catching_up } = self.writable(group)?;
        // The calls run concurrently inside this task, each followed by the wait for its
        // replica's removal if it fails: a removal is a Raft round trip, and while one is
        // awaited the other calls must go on being polled (their link timeouts run meanwhile).
        let inner = &self;
        let mut calls: FuturesUnordered<_> = live
            .into_iter()
            .map(|r| (r, true))
            .chain(catching_up.into_iter().map(|r| (r, false)))
            .map(|(replica, counts)| {
                let req = req.clone();
                async move {
                    let why = match replica.mutation(req).await {
                        Outcome::Fenced(current) => return Answer::Fenced(current),
                        Outcome::Acked(_) if counts => return Answer::Acked(replica),
                        Outcome::Acked(_) => return Answer::Aside(replica),
                        Outcome::Corrupt => {
                            "checksum failure on the replica, or a damaged reply".to_owned()
                        }
                        Outcome::Failed(why) => why,
                    };
                    inner.failed(group, &replica, why);
                    if !counts {
                        // A replica catching up that misses the write only ends its resync.
                        return Answer::AsideFailed;
                    }
                    Answer::Failed(inner.removed(group, &replica).await)
                }
            })
            .collect();
        let mut tally = Tally::default();
        // The replicas that took it, and whether each counts towards the acknowledgement.
        let mut took_it = Vec::new();
        let mut removed_one = false;
        while let Some(answer) = calls.next().await {
            match answer {
                Answer::Acked(r) => {
                    tally.acked();
                    took_it.push((r, true));
                }
                Answer::Fenced(current) => tally.fenced(current),
                Answer::Failed(removed) => {
                    removed_one |= removed;
                    tally.failed(removed);
                }
                Answer::Aside(r) => took_it.push((r, false)),
                Answer::AsideFailed => {}
            }
        }
        if removed_one && tally.verdict(self.config.min_replicas) == Verdict::Done {
            let acked_by: Vec<_> = took_it.iter().filter(|(_, c)| *c).map(|(r, _)| r).collect();
            self.reconfirm(group, &acked_by, &mut tally).await;
        }
        let extents = req.header.extents();
        let verdict = tally.verdict(self.config.min_replicas);
        // Under the group's shared hold: a resync that brings back a replica without a copy
        // decides with the group's writes held, so it sees this.
        if verdict == Verdict::Done {
            for r in self.members(group).iter() {
                if !took_it.iter().any(|(t, _)| Arc::ptr_eq(t, r)) {
                    r.ledger().acked_without(extents.clone());
                }
            }
        } else {
            // Those that took it hold a write the others may lack: a resync to or from them
            // copies these extents whatever the versions say.
            let extents: Vec<u64> = extents.collect();
            for (r, _) in &took_it {
                r.ledger().may_lack(&extents);
            }
        }
        match verdict {
            Verdict::Done => Ok(()),
            Verdict::Fenced { current } => Err(self.fence(current)),
            Verdict::Unremoved => Err(VolumeError::Io(format!(
                "a replica of group {group} failed and its removal from the acting set was not committed within {} ms",
                self.config.removal_wait_ms
            ))),
            Verdict::BelowMin { acked } => Err(VolumeError::Io(format!(
                "{:?} at {} reached {acked} replicas of group {group}, fewer than min_replicas {}",
                req.header.op, req.header.offset, self.config.min_replicas
            ))),
        }
    }

    /// A mutation of `group` was acked by `acked_by` and the others were removed meanwhile:
    /// before it counts as acknowledged, each replica that acked must still answer in the
    /// power epoch it acked in. A removal can take seconds, and a replica that acked early
    /// may have lost power since, taking the write along while the replica that was removed
    /// was the one left holding it. One that fails this leaves the acting set like any other.
    async fn reconfirm(
        self: &Arc<Self>,
        group: usize,
        acked_by: &[&Arc<Replica>],
        tally: &mut Tally,
    ) {
        let pings = acked_by.iter().map(|r| async move {
            let ping = Request::new(self.header(Op::Ping, 0, 0, 0, WriteVersion::NONE));
            r.read(ping).await
        });
        let answers = futures::future::join_all(pings).await;
        for (r, answer) in acked_by.iter().zip(answers) {
            let why = match answer {
                Outcome::Acked(_) | Outcome::Corrupt => continue,
                Outcome::Fenced(current) => {
                    tally.fenced(current);
                    continue;
                }
                Outcome::Failed(why) => why,
            };
            self.failed(group, r, why);
            let removed = self.removed(group, r).await;
            tally.withdrawn(removed);
        }
    }

    /// The version the next mutation of this writer is stamped with.
    pub(super) fn next_version(&self) -> WriteVersion {
        WriteVersion {
            epoch: self.config.attach_epoch,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Runs a mutation of `[offset, offset + len)`: takes the range, stamps each piece with the
    /// next version, and fans the pieces out.
    pub(super) async fn mutate(
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
        // Wait for groups that cannot take writes before taking any lock: a resync that would
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
            let version = self.next_version();
            let req = build(&self, piece, version);
            let group = self.group_of(piece.extent);
            tasks.push(Box::pin(Arc::clone(&self).mutate_group(group, req)));
        }
        run_bounded(tasks).await.map(|_| ())
    }

    /// Flushes every live replica of every group, each distinct replica once. Replicas that
    /// catch up are flushed too, so that what a client flushed is durable on them as well once
    /// their resync ends; one that fails only ends its resync. A live replica that fails must
    /// leave the acting set (as for a write) before the flush succeeds.
    pub(super) async fn flush(self: Arc<Self>) -> Result<(), VolumeError> {
        self.check_open()?;
        let mut members: BTreeMap<SocketAddr, Vec<(usize, Arc<Replica>)>> = BTreeMap::new();
        for g in 0..self.groups.len() {
            for r in self
                .members(g)
                .iter()
                .filter(|r| r.is_live() || r.is_catching_up())
            {
                members
                    .entry(r.addr())
                    .or_default()
                    .push((g, Arc::clone(r)));
            }
        }
        let req = Request::new(self.header(Op::Flush, 0, 0, 0, WriteVersion::NONE));
        let inner = &self;
        let mut calls: FuturesUnordered<_> = members
            .into_values()
            .map(|places| {
                let req = req.clone();
                async move {
                    let link = Arc::clone(&places[0].1.link);
                    let replicas: Vec<_> = places.iter().map(|(_, r)| Arc::clone(r)).collect();
                    let outcomes = flush_places(&link, &replicas, req).await;
                    // A dead replica is in many groups: report it in each, then wait for the
                    // live ones' removals together.
                    let mut live = Vec::new();
                    for ((g, r), answered) in places.iter().zip(outcomes) {
                        let why = match answered {
                            Outcome::Acked(_) => continue,
                            Outcome::Fenced(current) => return Err(Some(current)),
                            Outcome::Corrupt => "damaged flush reply".to_owned(),
                            Outcome::Failed(why) => why,
                        };
                        if r.is_live() {
                            live.push((*g, r));
                        }
                        inner.failed(*g, r, why);
                    }
                    let removals = live.iter().map(|(g, r)| inner.removed(*g, r));
                    let removed = futures::future::join_all(removals).await;
                    if removed.into_iter().all(|r| r) {
                        Ok(())
                    } else {
                        Err(None)
                    }
                }
            })
            .collect();
        let (mut fenced, mut unremoved) = (None, false);
        while let Some(result) = calls.next().await {
            match result {
                Ok(()) => {}
                Err(Some(current)) => fenced = Some(fenced.unwrap_or(0).max(current)),
                Err(None) => unremoved = true,
            }
        }
        if let Some(current) = fenced {
            return Err(self.fence(current));
        }
        if unremoved {
            return Err(VolumeError::Io(format!(
                "a replica failed the flush and its removal from the acting set was not committed within {} ms",
                self.config.removal_wait_ms
            )));
        }
        // A replica that failed in another IO and has not left yet did not get this flush.
        for g in 0..self.groups.len() {
            self.wait_removals(g).await?;
        }
        Ok(())
    }
}
