//! Reconciling the live replicas of a volume when a new writer takes it over.
//!
//! A writer that died or was fenced may have had writes in flight: each reached some replicas
//! and not others, and no client is left that knows which. Once the new writer's attach
//! epoch is installed on every live replica, no such write can land any more, but the
//! replicas may hold different contents for the extents those writes touched, under different
//! versions; the new writer's own writes would then raise every replica's version alike and
//! hide the difference for good. So before it writes, the new writer compares the live
//! replicas' versions extent by extent and copies each extent that differs from the replica
//! with the newest version to the others. Either content was a correct answer for a write
//! that was never acknowledged; afterwards the replicas agree on one.
//!
//! A replica that crashed while the extent had writes that were not durable reports it
//! *suspect* (`replica::intent`): its blocks may be torn while its version looks current. A
//! suspect copy is never the source while a live replica can vouch for the extent, and it is
//! copied over even when its version is equal.
//!
//! Equal versions do not prove equal contents: a dying writer's write that reached one replica
//! and a later write of another block of the extent that reached all leave every replica with
//! the later version. So an extent any replica marks as written recently (`replica::intent`)
//! has its contents compared by digest, computed on each replica, and copied where they differ.

use crate::volume::VolumeError;
use crate::wire::EXTENT_SIZE_BYTES;

use super::ReplicatedVolume;

impl ReplicatedVolume {
    /// Makes the live replicas of every group agree (see the module docs); returns the bytes
    /// copied. Call after the attach epoch is installed (a first flush) and before writing.
    pub async fn reconcile(&self) -> Result<u64, VolumeError> {
        let inner = &self.inner;
        inner.check_open()?;
        // One size for the whole pass: every replica's versions are read for it.
        let size = inner.size();
        let mut copied = 0;
        for group in 0..inner.groups.len() {
            let live: Vec<_> = inner
                .members(group)
                .iter()
                .filter(|r| r.is_live())
                .cloned()
                .collect();
            if live.len() < 2 {
                continue;
            }
            // A replica that fails here fails as it would under IO: it leaves the acting set
            // (the group's writes wait for that) and is resynced later.
            let mut answered = Vec::with_capacity(live.len());
            let mut versions = Vec::with_capacity(live.len());
            for r in live {
                match inner.all_versions(&r, size).await {
                    Ok(v) => {
                        versions.push(v);
                        answered.push(r);
                    }
                    Err(e) if inner.check_open().is_err() => return Err(e),
                    Err(e) => inner.failed(group, &r, e.to_string()),
                }
            }
            let live = answered;
            if live.len() < 2 {
                continue;
            }
            let extents = size.div_ceil(EXTENT_SIZE_BYTES);
            for e in (0..extents).filter(|&e| inner.group_of(e) == group) {
                let at = |i: usize| versions[i][e as usize];
                // A replica that cannot vouch for the extent is no source while one that can
                // is live.
                let vouched = (0..live.len()).any(|i| !at(i).suspect);
                let newest = (0..live.len())
                    .filter(|&i| !vouched || !at(i).suspect)
                    .max_by_key(|&i| at(i).version)
                    .expect("two replicas");
                let mut differs: Vec<bool> = (0..live.len())
                    .map(|i| {
                        at(i).version != at(newest).version
                            || (at(i).suspect && !at(newest).suspect)
                    })
                    .collect();
                let offset = e * EXTENT_SIZE_BYTES;
                let len = (size - offset).min(EXTENT_SIZE_BYTES) as u32;
                if !differs.contains(&true) && (0..live.len()).any(|i| at(i).recent) {
                    // Equal versions, but written recently: a write that reached some replicas
                    // only may hide under a later one that reached all. Compare contents.
                    let digests = futures::future::join_all(
                        live.iter().map(|r| inner.digest(r, offset, len)),
                    )
                    .await;
                    let Ok(theirs) = &digests[newest] else {
                        tracing::warn!(volume = %inner.config.volume, group, extent = e, replica = %live[newest].addr(), "recently written extent unreadable on the replica to copy from: left to reads and repair");
                        continue;
                    };
                    for (i, d) in digests.iter().enumerate() {
                        differs[i] = d.as_ref().is_ok_and(|d| d != theirs) || d.is_err();
                    }
                }
                if !differs.contains(&true) {
                    continue;
                }
                let range = inner.extent_lock(e);
                let _held = inner.locks.lock(range.0, range.1).await;
                for i in (0..live.len()).filter(|&i| differs[i]) {
                    tracing::info!(volume = %inner.config.volume, group, extent = e, from = %live[newest].addr(), to = %live[i].addr(), "replicas differ after a change of writer: copying the newest");
                    match inner.copy_range(&live[newest], &live[i], offset, len).await {
                        Ok(bytes) => copied += bytes,
                        Err(e) if inner.check_open().is_err() => return Err(e),
                        // The copy is not made: the replica that was to take it leaves.
                        Err(e) => inner.failed(group, &live[i], e.to_string()),
                    }
                }
            }
        }
        Ok(copied)
    }
}
