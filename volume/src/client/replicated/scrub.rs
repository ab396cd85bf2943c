//! Scrub: every replica of a group checks its copy of each extent against the checksums it
//! stored (SCRUB, run on the replica in the scrub class, so only a verdict crosses the
//! network), and what it finds is repaired from a good copy, by the volume's writer.
//!
//! A *light* scrub checks checksums only. A block that fails on one replica is rewritten from
//! a replica whose block passed, under the range lock, as a read's repair is; when the two
//! copies' versions differ the whole extent is copied instead, since stamping the newer
//! version on a single repaired block would hide every other block in which they differ. A
//! *deep* scrub also holds the extent's range, so no write lands between the replicas' reads,
//! and compares the copies: their versions, and the digests the same pass computed. The source
//! is a current copy at the newest version whose digest most copies share; every copy that
//! differs from it is copied over, whole.
//!
//! Nothing is ever repaired from a stale replica: only a live member of the acting set is a
//! source (a stale one is out of it until a resync brings it back), and of those the best
//! kind there is: one that can vouch for the extent (not *suspect*) and that the ledger says
//! took no write that was not acknowledged, before a suspect one, before one that took such
//! a write (see `Copy::rank`). With no live copy of a block that passes its checksum, the bad
//! copy is left, counted as unrepaired, for the operator.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;

use crate::volume::VolumeError;
use crate::wire::scrub::{Verdict, decode};
use crate::wire::{EXTENT_SIZE_BYTES, ExtentVersion, Op, Request, WriteVersion};

use super::members::Replica;
use super::{Inner, LOCK_BLOCK_BYTES, Reach, ReplicatedVolume};

/// Request flags of scrub IO: its class at the replicas' disk schedulers.
const SCRUB: u8 = crate::sched::class::Class::Scrub.flags();
/// Extents of one group scrubbed at once: enough to keep a replica's disk busy with large
/// sequential reads, few enough that a deep scrub holds little of the volume at a time.
const EXTENTS_IN_FLIGHT: usize = 4;

/// What a scrub of one group found and did; counts of replica extents unless said otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubTally {
    /// Extents of the volume in the group that were scrubbed.
    pub extents: u64,
    /// Bytes the replicas read and checked, over all of them.
    pub bytes_checked: u64,
    /// Blocks that failed their checksum.
    pub bad_blocks: u64,
    /// Copies whose version or contents differed from the source's (deep scrub).
    pub divergent: u64,
    /// Bad blocks and divergent copies rewritten from a good copy.
    pub repaired: u64,
    /// Bad blocks and divergent copies left as they were: no good source, or the copy failed.
    pub unrepaired: u64,
    /// Replica extents that could not be checked (the replica did not answer).
    pub unchecked: u64,
}

impl ScrubTally {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ScrubTally) {
        self.extents += other.extents;
        self.bytes_checked += other.bytes_checked;
        self.bad_blocks += other.bad_blocks;
        self.divergent += other.divergent;
        self.repaired += other.repaired;
        self.unrepaired += other.unrepaired;
        self.unchecked += other.unchecked;
    }

    /// Errors found: bad blocks and divergent copies.
    pub fn errors(&self) -> u64 {
        self.bad_blocks + self.divergent
    }
}

/// One live replica's state for an extent being scrubbed.
struct Copy {
    replica: Arc<Replica>,
    verdict: Verdict,
    version: ExtentVersion,
    /// Whether the ledger says it may lack an acknowledged write of the extent.
    missed: bool,
}

impl Copy {
    /// How good a source of repairs this copy is, best first; `None` for none at all (it left
    /// the acting set meanwhile). A copy that can vouch for the extent and that the ledger
    /// says lacks no write of it ranks first; one that crashed with writes of the extent in
    /// flight (*suspect*) next; last one that took a write that was not acknowledged (so
    /// holds data a read could return as well). A read fails over in the same order.
    fn rank(&self) -> Option<u8> {
        match (self.replica.is_live(), self.missed, self.version.suspect) {
            (false, _, _) => None,
            (true, false, false) => Some(0),
            (true, false, true) => Some(1),
            (true, true, _) => Some(2),
        }
    }
}

/// Of `candidates`, those of the best rank there is, the newest first.
fn best<'a>(candidates: impl Iterator<Item = &'a Copy>) -> Vec<&'a Copy> {
    let ranked: Vec<(u8, &Copy)> = candidates.filter_map(|c| Some((c.rank()?, c))).collect();
    let Some(top) = ranked.iter().map(|&(r, _)| r).min() else {
        return Vec::new();
    };
    let mut out: Vec<&Copy> = ranked
        .into_iter()
        .filter(|&(r, _)| r == top)
        .map(|(_, c)| c)
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.version.version));
    out
}

impl ReplicatedVolume {
    /// Groups (PGs) of the volume.
    pub fn group_count(&self) -> usize {
        self.inner.groups.len()
    }

    /// Scrubs the volume's extents in `group` (see the module docs); a deep scrub also
    /// compares the copies. Fails only when the volume is fenced; a replica that does not
    /// answer is counted in [`ScrubTally::unchecked`] and stays where it is.
    pub async fn scrub_group(&self, group: usize, deep: bool) -> Result<ScrubTally, VolumeError> {
        let inner = &self.inner;
        inner.check_open()?;
        let size = inner.size();
        let extents: Vec<u64> = (0..size.div_ceil(EXTENT_SIZE_BYTES))
            .filter(|&e| inner.group_of(e) == group)
            .collect();
        let mut total = ScrubTally::default();
        let mut each = futures::stream::iter(extents)
            .map(|e| Arc::clone(inner).scrub_extent(group, e, deep))
            .buffer_unordered(EXTENTS_IN_FLIGHT);
        while let Some(tally) = each.next().await {
            total.add(&tally);
        }
        inner.check_open()?;
        Ok(total)
    }
}

impl Inner {
    async fn scrub_extent(self: Arc<Self>, group: usize, e: u64, deep: bool) -> ScrubTally {
        let mut tally = ScrubTally {
            extents: 1,
            ..ScrubTally::default()
        };
        let offset = e * EXTENT_SIZE_BYTES;
        let len = (self.size() - offset).min(EXTENT_SIZE_BYTES) as u32;
        let range = self.extent_lock(e);
        // A deep scrub compares contents, so no write may land between the copies' reads.
        let mut held = if deep {
            Some(self.locks.lock(range.0, range.1).await)
        } else {
            None
        };
        let live: Vec<_> = self
            .members(group)
            .iter()
            .filter(|r| r.is_live())
            .cloned()
            .collect();
        let verdicts =
            futures::future::join_all(live.iter().map(|r| self.scrub_call(r, offset, len))).await;
        let mut answered = Vec::new();
        for (r, verdict) in live.into_iter().zip(verdicts) {
            match verdict {
                Ok(v) => {
                    tally.bytes_checked += u64::from(len);
                    if let Verdict::Bad(blocks) = &v {
                        tally.bad_blocks += blocks.len() as u64;
                        tracing::error!(volume = %self.config.volume, group, extent = e, replica = %r.addr(), blocks = ?blocks, "scrub: blocks fail their checksum");
                    }
                    answered.push((r, v));
                }
                Err(why) => {
                    tally.unchecked += 1;
                    tracing::warn!(volume = %self.config.volume, group, extent = e, replica = %r.addr(), error = %why, "scrub: replica not checked");
                }
            }
        }
        let damaged = answered.iter().any(|(_, v)| matches!(v, Verdict::Bad(_)));
        // Nothing to repair, and nothing to compare.
        if !(damaged || deep && answered.len() > 1) {
            return tally;
        }
        if held.is_none() {
            held = Some(self.locks.lock(range.0, range.1).await);
        }
        // Versions and ledgers are read with the range held: the writes that change them wait.
        let mut copies = Vec::with_capacity(answered.len());
        for (replica, verdict) in answered {
            match self.versions(&replica.link, e, 1, Reach::Responsive).await {
                Ok(v) => {
                    let missed = replica.ledger().missed().contains(&e);
                    copies.push(Copy {
                        replica,
                        verdict,
                        version: v[0],
                        missed,
                    });
                }
                Err(why) => {
                    tally.unchecked += 1;
                    tracing::warn!(volume = %self.config.volume, group, extent = e, replica = %replica.addr(), error = %why, "scrub: versions not read");
                }
            }
        }
        self.repair_bad_blocks(group, e, &copies, &mut tally).await;
        if deep {
            self.repair_divergent(group, e, &copies, &mut tally).await;
        }
        drop(held);
        tally
    }

    /// Rewrites each bad block from the best live copy whose block passed, when its version
    /// is the same (a whole extent at another version, or never written, is copied instead);
    /// the caller holds the extent's range.
    async fn repair_bad_blocks(
        &self,
        group: usize,
        e: u64,
        copies: &[Copy],
        tally: &mut ScrubTally,
    ) {
        for (i, bad) in copies.iter().enumerate() {
            let Verdict::Bad(blocks) = &bad.verdict else {
                continue;
            };
            let good_at = |c: &Copy, block: u64| match &c.verdict {
                Verdict::Clean(_) => true,
                Verdict::Bad(theirs) => !theirs.contains(&block),
            };
            let mut whole_extent_copied = false;
            for &block in blocks {
                if whole_extent_copied {
                    tally.repaired += 1;
                    continue;
                }
                let others = copies.iter().enumerate().filter(|&(j, _)| j != i);
                let good = others.map(|(_, c)| c).filter(|c| good_at(c, block));
                let Some(source) = best(good).first().copied() else {
                    tally.unrepaired += 1;
                    tracing::error!(volume = %self.config.volume, group, extent = e, replica = %bad.replica.addr(), offset = block, "scrub: no live copy holds a good block to repair from");
                    continue;
                };
                // An extent its source never wrote is reset whole (no write may carry no
                // version), as a resync resets it.
                let same = source.version.version == bad.version.version;
                let copied = if same && source.version.version != WriteVersion::NONE {
                    let len = LOCK_BLOCK_BYTES.min(self.size() - block) as u32;
                    self.copy_stamped(
                        &source.replica,
                        &bad.replica,
                        block,
                        len,
                        source.version.version,
                    )
                    .await
                } else {
                    whole_extent_copied = true;
                    self.copy_extent_over(source, &bad.replica, copies, e)
                        .await
                        .map(|_| 0)
                };
                match copied {
                    Ok(_) => {
                        tally.repaired += 1;
                        tracing::warn!(volume = %self.config.volume, group, extent = e, replica = %bad.replica.addr(), from = %source.replica.addr(), offset = block, whole_extent = whole_extent_copied, "scrub: bad block repaired");
                    }
                    Err(why) => {
                        tally.unrepaired += 1;
                        tracing::error!(volume = %self.config.volume, group, extent = e, replica = %bad.replica.addr(), offset = block, error = %why, "scrub: bad block not repaired");
                    }
                }
            }
        }
    }

    /// Copies the source (the newest current copy, by majority of digest among equals) over
    /// every copy that differs from it; the caller holds the extent's range. Copies that had
    /// bad blocks were repaired block by block and are not compared again.
    async fn repair_divergent(
        &self,
        group: usize,
        e: u64,
        copies: &[Copy],
        tally: &mut ScrubTally,
    ) {
        let clean = |c: &Copy| match c.verdict {
            Verdict::Clean(d) => Some(d),
            Verdict::Bad(_) => None,
        };
        let sources = best(copies.iter().filter(|c| clean(c).is_some()));
        let Some(newest) = sources.first().map(|c| c.version.version) else {
            if copies.len() > 1 {
                tracing::warn!(volume = %self.config.volume, group, extent = e, "scrub: no live copy passed its checksums: not compared");
            }
            return;
        };
        let mut votes: BTreeMap<u32, usize> = BTreeMap::new();
        for c in sources.iter().filter(|c| c.version.version == newest) {
            if let Some(d) = clean(c) {
                *votes.entry(d).or_default() += 1;
            }
        }
        let (&digest, &count) = votes
            .iter()
            .max_by_key(|&(_, n)| *n)
            .expect("the newest copy voted");
        if votes.values().filter(|&&n| n == count).count() > 1 {
            tracing::warn!(volume = %self.config.volume, group, extent = e, "scrub: current copies at the newest version differ with no majority: the first is kept");
        }
        let source = sources
            .iter()
            .find(|c| c.version.version == newest && clean(c) == Some(digest))
            .expect("a copy voted for the digest");
        let mut everywhere = false;
        for c in copies {
            let differs = match clean(c) {
                Some(d) => d != digest || c.version.version != newest,
                // Repaired block by block above.
                None => false,
            };
            if !differs || Arc::ptr_eq(&c.replica, &source.replica) {
                continue;
            }
            tally.divergent += 1;
            tracing::warn!(volume = %self.config.volume, group, extent = e, replica = %c.replica.addr(), version = ?c.version.version, from = %source.replica.addr(), newest = ?newest, "scrub: copy differs from the current one");
            if everywhere {
                // An earlier copy of this pass rewrote every live copy, this one too.
                tally.repaired += 1;
                continue;
            }
            match self.copy_extent_over(source, &c.replica, copies, e).await {
                Ok(all) => {
                    everywhere = all;
                    tally.repaired += 1;
                }
                Err(why) => {
                    tally.unrepaired += 1;
                    tracing::error!(volume = %self.config.volume, group, extent = e, replica = %c.replica.addr(), error = %why, "scrub: divergent copy not repaired");
                }
            }
        }
    }

    /// Copies `source`'s whole extent `e` over `target`. A copy carries its source's version,
    /// and a replica's version of an extent never falls; so when a live copy holds a newer
    /// version than the source (one that took a write that was never acknowledged: the source
    /// outranks it), the source's contents are written over every live copy, the source's
    /// own included, under a fresh version of this writer, or the copies would be left
    /// differing in version and the next deep scrub would copy the newer one back. Returns
    /// whether it did so.
    async fn copy_extent_over(
        &self,
        source: &Copy,
        target: &Replica,
        copies: &[Copy],
        e: u64,
    ) -> Result<bool, VolumeError> {
        let offset = e * EXTENT_SIZE_BYTES;
        let len = (self.size() - offset).min(EXTENT_SIZE_BYTES) as u32;
        let newer = copies
            .iter()
            .any(|c| c.rank().is_some() && c.version.version > source.version.version);
        if !newer {
            return self
                .copy_range(&source.replica, target, offset, len)
                .await
                .map(|_| false);
        }
        let version = self.next_version();
        for c in copies.iter().filter(|c| c.rank().is_some()) {
            self.copy_stamped(&source.replica, &c.replica, offset, len, version)
                .await?;
        }
        Ok(true)
    }

    /// Asks `replica` to check `[offset, offset + len)` against its checksums. As a probe: a
    /// replica that timed out once is asked all the same (a live member is expected to
    /// answer), and its answer makes it usable again.
    async fn scrub_call(
        &self,
        replica: &Replica,
        offset: u64,
        len: u32,
    ) -> Result<Verdict, VolumeError> {
        let link = &replica.background;
        let req = Request::new(self.header(Op::Scrub, offset, len, SCRUB, WriteVersion::NONE));
        let payload = self.answer(link.probe(req).await, link.addr())?;
        decode(&payload, offset, u64::from(len))
            .ok_or_else(|| VolumeError::Io(format!("{}: malformed scrub reply", link.addr())))
    }
}
