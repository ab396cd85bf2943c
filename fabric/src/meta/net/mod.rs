//! The Raft transport between members over gRPC: [`client`] is openraft's network (one cached
//! channel per peer), [`server`] answers it, [`forward`] is the follower → leader path for
//! metadata writes and linearizable reads.

pub mod client;
pub mod forward;
pub mod secure;
pub mod server;

use std::time::Duration;

/// Largest gRPC message between members and from clients, in bytes (tonic's default is 4 MiB).
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Size of one snapshot chunk on the wire, in bytes.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest snapshot a member accepts, in bytes.
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 30;
/// Deadline of a snapshot transfer: a base plus an allowance per MiB.
pub const SNAPSHOT_DEADLINE_BASE_MS: u64 = 10_000;
pub const SNAPSHOT_DEADLINE_PER_MIB_MS: u64 = 1_000;
/// Deadline of one forwarded request (follower → leader).
pub const FORWARD_DEADLINE_MS: u64 = 10_000;
/// Deadline for establishing a connection to a peer.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// How long sending a snapshot of `len` bytes may take.
pub fn snapshot_deadline(len: usize) -> Duration {
    Duration::from_millis(
        SNAPSHOT_DEADLINE_BASE_MS + (len as u64 >> 20) * SNAPSHOT_DEADLINE_PER_MIB_MS,
    )
}
