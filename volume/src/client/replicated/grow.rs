//! Following a resize: the volume takes its new, larger size once every live replica holds
//! it, so that no IO in the new range reaches a replica that would refuse it (and leave its
//! acting set for that).
//!
//! The replicas are grown by the storage agent of their node, which follows the cluster's
//! record of the volume; the writer only finds out when they are. It asks each live replica
//! for the digest of the last block of the new size (DIGEST is not fenced and reads 4 KiB): a
//! replica that answers OUT_OF_RANGE has not grown yet, and the volume waits. A replica that
//! does not answer does not hold the grow back: like any failed replica it leaves its acting
//! set on its next IO, and it cannot be resynced before its node has grown it (reading its
//! versions over the new size fails until then).
//!
//! The new size is set with every group held, taken in ascending order as a mutation takes
//! its groups: the mutations in flight finish first, and a resync sees one size for as long as
//! it holds its group. A connection that already serves the volume keeps the size it was
//! told; the next one sees the new size.
//!
//! A writer that attaches after a resize starts at the new size, and asks the same question
//! of each replica before it counts it ready ([`ReplicatedVolume::replica_holds_size`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::client::link::Link;
use crate::volume::VolumeError;
use crate::wire::{Op, Request, Status, WriteVersion};

use super::{Inner, LOCK_BLOCK_BYTES, ReplicatedVolume};

/// How [`ReplicatedVolume::grow`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// The volume has the new size (or had it already).
    Grown,
    /// `replica` does not hold the new size yet (its node has not grown it): ask again later.
    Waiting { replica: SocketAddr },
}

impl ReplicatedVolume {
    /// Grows the volume to `size_bytes` if every live replica holds that size (see the module
    /// docs). A smaller size, or one that is not whole blocks, is refused.
    pub async fn grow(&self, size_bytes: u64) -> Result<Growth, VolumeError> {
        let inner = &self.inner;
        inner.check_open()?;
        let size = inner.size();
        if size_bytes == size {
            return Ok(Growth::Grown);
        }
        if size_bytes < size || !size_bytes.is_multiple_of(LOCK_BLOCK_BYTES) {
            return Err(VolumeError::Io(format!(
                "volume {} of {size} bytes cannot take the size {size_bytes}: it only grows, by whole blocks",
                inner.config.name
            )));
        }
        // Each replica once, however many groups it serves.
        let mut links: BTreeMap<SocketAddr, Arc<Link>> = BTreeMap::new();
        for g in 0..inner.groups.len() {
            for r in inner.members(g).iter().filter(|r| r.is_live()) {
                links.entry(r.addr()).or_insert_with(|| Arc::clone(&r.link));
            }
        }
        let answers =
            futures::future::join_all(links.values().map(|link| inner.holds(link, size_bytes)))
                .await;
        for (&replica, answer) in links.keys().zip(answers) {
            match answer {
                Ok(true) => {}
                Ok(false) => return Ok(Growth::Waiting { replica }),
                Err(e) => {
                    tracing::debug!(volume = %inner.config.volume, %replica, error = %e, "replica not asked whether it grew: it leaves the acting set on its next IO")
                }
            }
        }
        let mut held = Vec::with_capacity(inner.group_locks.len());
        for group in &inner.group_locks {
            held.push(group.write().await);
        }
        let before = inner.size_bytes.fetch_max(size_bytes, Ordering::AcqRel);
        drop(held);
        if before < size_bytes {
            tracing::info!(volume = %inner.config.volume, from_bytes = before, size_bytes, "volume grown: new connections see the new size");
        }
        Ok(Growth::Grown)
    }
}

impl ReplicatedVolume {
    /// Whether `replica` holds the volume at its current size (one that does not yet has not
    /// followed a resize). An error says nothing either way.
    pub async fn replica_holds_size(&self, replica: SocketAddr) -> Result<bool, VolumeError> {
        let inner = &self.inner;
        let link = inner.link_of(replica)?;
        inner.holds(&link, inner.size()).await
    }
}

impl Inner {
    /// Asks the replica behind `link` whether it holds `size_bytes` of the volume: the digest of
    /// the last block is answered OUT_OF_RANGE when it does not. `Err` when it did not say.
    async fn holds(&self, link: &Link, size_bytes: u64) -> Result<bool, VolumeError> {
        let last_block = self.header(
            Op::Digest,
            size_bytes - LOCK_BLOCK_BYTES,
            LOCK_BLOCK_BYTES as u32,
            0,
            WriteVersion::NONE,
        );
        match link.call(Request::new(last_block)).await {
            Ok(reply) if reply.header.status == Status::OutOfRange => Ok(false),
            Ok(reply) if reply.header.status == Status::Ok => Ok(true),
            Ok(reply) => Err(VolumeError::Io(format!(
                "{}: replica answered {:?}",
                link.addr(),
                reply.header.status
            ))),
            Err(e) => Err(VolumeError::Io(format!("{}: {e}", link.addr()))),
        }
    }
}
