//! The replicated volume client (the volume driver): a [`BlockVolume`] whose extents live on
//! replica servers, so the NBD server can export a replicated volume unchanged.
//!
//! - Every IO is split at extent boundaries ([`split`]); each extent belongs to one group of
//!   replicas (its acting set). Here the acting sets are *static*, given at construction as
//!   [`ActingSets`]; the placement-group map from the metadata service replaces them later.
//! - Writes, trims and zeroings go to every live replica of the group in parallel and succeed
//!   when all of them acked, each stamped with the version `(attach_epoch, seq)`, `seq` from a
//!   per-volume counter. Overlapping mutations are serialised by a block range lock held from
//!   before their `seq` is taken until every replica answered, so all replicas apply them in
//!   the same order.
//! - Reads go to one live replica, the first of the group preferred (the local one, by
//!   convention of whoever builds the acting sets), and fail over to the next on any error or
//!   a checksum failure.
//! - A replica that errors, closes its connection, or does not answer within the pool's
//!   `request_timeout_ms` is reported through [`AclObserver::replica_failed`]. A write or
//!   flush waits for that removal to commit (at most `removal_wait_ms`) before it completes on
//!   the remaining replicas; a read moves on to the next replica at once, the removal running
//!   beside it. A removal that cannot commit is retried with a growing pause for as long as it
//!   takes, and the group's writes wait (bounded) and fail meanwhile ([`membership`] is the
//!   state machine). Fewer than `min_replicas` left: writes wait up to `below_min_wait_ms` for
//!   a replica to come back, then fail with an IO error.
//! - A replica answering FENCED means another client attached with a newer epoch: the volume
//!   reports itself fenced ([`AclObserver::fenced`]) and refuses every further IO.
//! - Where replicas check attach capabilities, the links present the volume's from the pool's
//!   [`Capabilities`] (set by whoever attached the volume). A replica answering UNAUTHORIZED
//!   (no capability, or one it refused) failed the call, like an error: it is not FENCED,
//!   which only a newer epoch the replica admitted can cause.
//!
//! Code map: `link` is the pipelined connection to one replica, over the [`Connector`] seam;
//! [`pool`] holds the links and budgets every volume of one driver shares, and the
//! [`Capabilities`] its links present; [`split`] cuts IOs
//! at extent boundaries, [`tally`] decides how a fan-out ends and [`membership`] how a
//! replica enters and leaves its group (all three pure); `bounded` runs an IO's pieces a
//! bounded number at a time; `replicated` is the [`ReplicatedVolume`] itself. Start at
//! [`ReplicatedVolume::new`].
//!
//! [`BlockVolume`]: crate::volume::BlockVolume

mod bounded;
pub mod capabilities;
mod link;
pub mod membership;
pub mod pace;
pub mod pool;
mod replicated;
pub mod split;
pub mod tally;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

pub use capabilities::Capabilities;
pub use link::{
    ConnectFuture, Connector, Link, LinkError, StreamReader, StreamWriter, TcpConnector,
};
pub use pool::{PoolConfig, ReplicaPool};
pub use replicated::{
    Growth, RESYNC_BYTES_PER_SEC_MAX, ReplicatedVolume, ResyncReport, ScrubTally,
};

use crate::wire::{EXTENT_SIZE_BYTES, VolumeId};

/// Default wait of a write for a group below `min_replicas`, in milliseconds.
pub const BELOW_MIN_WAIT_MS_DEFAULT: u64 = 10_000;
/// Default wait of a write or flush for the removal of a failed replica to commit, in
/// milliseconds: past it the IO fails, and the removal goes on being retried.
pub const REMOVAL_WAIT_MS_DEFAULT: u64 = 10_000;
/// Largest read or write the volume accepts, in bytes (split into extent pieces).
pub const IO_SIZE_MAX_BYTES: u32 = 32 * 1024 * 1024;
/// Pieces of one IO (or trim) sent at a time, so a huge trim cannot flood the replicas.
pub const PIECES_IN_FLIGHT_MAX: usize = 64;

const _: () = assert!((IO_SIZE_MAX_BYTES as u64).is_multiple_of(EXTENT_SIZE_BYTES));

/// What the client needs to know about the volume it serves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The export name.
    pub name: String,
    pub volume: VolumeId,
    pub size_bytes: u64,
    /// Granted by the metadata service at attach; every request carries it.
    pub attach_epoch: u64,
    /// Writes fail when fewer replicas than this would hold them.
    pub min_replicas: usize,
    /// How long a write waits for a group below `min_replicas` to get a replica back (from a
    /// resync) before it fails with an IO error.
    pub below_min_wait_ms: u64,
    /// How long a write or flush waits for a failed replica's removal to commit before it
    /// fails with an IO error.
    pub removal_wait_ms: u64,
    /// Most bytes a resync copies per second while clients do IO ([`RESYNC_BYTES_PER_SEC_MAX`],
    /// the fixed pace); 0: none here, the replicas' disk schedulers keep recovery from
    /// hurting clients (`sched::governor`).
    pub resync_pace_bytes_per_sec: u64,
}

/// Why [`ReplicatedVolume::new`] refused its input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientConfigError {
    #[error("size {0} must be a non-zero multiple of 4096")]
    Size(u64),
    #[error("attach epoch must be positive (0 means never attached)")]
    Epoch,
    #[error("min_replicas must be at least 1")]
    MinReplicas,
    #[error("below_min_wait_ms and removal_wait_ms must be positive")]
    Limits,
    #[error(
        "acting sets must list at least one group, each with at least one current replica and no address twice"
    )]
    ActingSets,
}

/// The replicas of each placement group of a volume, in preference order: one group per PG of
/// the volume's pool. Extent `e` of volume `v` belongs to PG [`pg_of`]`(v, e, groups.len())`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActingSets {
    /// Per PG, the replicas in the acting set: current, written and read.
    pub groups: Vec<Vec<SocketAddr>>,
    /// Per PG (may be shorter than `groups`), replicas out of the acting set because they
    /// missed writes: neither written nor read until [`ReplicatedVolume::resync`] brings them
    /// back.
    pub stale: Vec<Vec<SocketAddr>>,
}

/// The placement group of extent `extent` of `volume` in a pool of `pg_count` PGs. Pinned: every
/// driver and tool must agree on it for as long as the data exists, so it is built only from
/// placement's pinned mixer and `tests::pg_of_is_pinned` fixes its outputs.
pub fn pg_of(volume: VolumeId, extent: u64, pg_count: usize) -> usize {
    assert!(pg_count > 0);
    let key = placement::hash::mix64(placement::hash::mix64(volume.0) ^ extent);
    (key % pg_count as u64) as usize
}

impl ActingSets {
    /// One group holding every extent on `replicas`.
    pub fn single(replicas: Vec<SocketAddr>) -> ActingSets {
        ActingSets {
            groups: vec![replicas],
            stale: Vec::new(),
        }
    }

    pub fn group_of(&self, volume: VolumeId, extent: u64) -> usize {
        pg_of(volume, extent, self.groups.len())
    }
}

/// A replica that failed and must leave a group's acting set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFailure {
    pub volume: VolumeId,
    pub group: usize,
    pub replica: SocketAddr,
    /// The attach epoch the client acts under: the metadata service refuses a removal by a
    /// client that was fenced.
    pub attach_epoch: u64,
    pub reason: String,
}

/// Why an acting-set change was not made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemovalError {
    /// The metadata service could not commit it now (no quorum, unreachable): retried later.
    #[error("not committed: {0}")]
    Unavailable(String),
    /// The metadata service refused it, e.g. the replica holds the PG's last current copy.
    #[error("refused: {0}")]
    Refused(String),
    /// The volume was attached by another client with epoch `current`.
    #[error("fenced by attach epoch {current}")]
    Fenced { current: u64 },
}

/// Future of an acting-set change.
pub type AclFuture = Pin<Box<dyn Future<Output = Result<(), RemovalError>> + Send + 'static>>;

/// The seam between the data path and the metadata service: what the client reports, and
/// what it waits for.
pub trait AclObserver: Send + Sync + 'static {
    /// `failure.replica` must leave the acting set of `failure.group`. `Ok` means the change
    /// is committed: only then may a write the replica missed be acknowledged. After an
    /// `Unavailable` error the client asks again later, for as long as it takes; the group's
    /// writes fail meanwhile.
    fn replica_failed(&self, failure: ReplicaFailure) -> AclFuture;

    /// A replica refused the volume's epoch: another client holds a newer attach (`current`).
    fn fenced(&self, volume: VolumeId, our_epoch: u64, current: u64);

    /// A replica holds a block that failed its checksum at `offset`; the read was served by
    /// another replica. The seam for repair.
    fn block_corrupt(&self, volume: VolumeId, replica: SocketAddr, offset: u64) {
        tracing::warn!(%volume, %replica, offset, "replica returned a checksum failure");
    }
}

/// An observer that accepts every removal at once and only logs: for tests and tools without
/// a metadata service.
pub struct LoggingObserver;

impl AclObserver for LoggingObserver {
    fn replica_failed(&self, failure: ReplicaFailure) -> AclFuture {
        tracing::warn!(volume = %failure.volume, group = failure.group, replica = %failure.replica, reason = %failure.reason, "replica removed from the acting set");
        Box::pin(async { Ok(()) })
    }

    fn fenced(&self, volume: VolumeId, our_epoch: u64, current: u64) {
        tracing::error!(%volume, our_epoch, current, "volume fenced by a newer attach");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_of_is_pinned() {
        // Changing these moves every extent of every volume to another PG: never do it.
        let got: Vec<usize> = (0..6).map(|e| pg_of(VolumeId(7), e, 64)).collect();
        assert_eq!(got, PINNED);
    }

    const PINNED: [usize; 6] = [56, 53, 17, 23, 27, 14];
}
