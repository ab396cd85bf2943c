//! Fabric's data plane on one node.
//!
//! - [`io`]: the disk seam ([`io::Disk`], [`io::BlockFile`]) with an io_uring backend, a portable
//!   pread/pwrite backend and a simulated backend for fault injection.
//! - [`store`]: the extent store, which keeps thin volumes on a disk with a crc32c for every 4 KiB
//!   block, verified on every read.
//! - [`volume`]: the [`BlockVolume`] trait, the one interface the NBD server serves.
//! - [`nbd`]: the NBD protocol codec and server.
//! - [`wire`]: the replica wire protocol codec (no IO).
//! - [`capability`]: attach capabilities, the signed proof that a client may use a volume at an
//!   attach epoch, which replicas check before they admit the epoch.
//! - [`replica`]: the replica server, serving a node's extent store to volume clients.
//! - [`sched`]: the IO scheduler of a disk (mClock: reservation, weight and limit per class
//!   and per volume).
//! - [`client`]: the replicated volume client, a [`BlockVolume`] over replica servers.

pub mod capability;
pub mod checksum;
pub mod client;
mod framing;
pub mod io;
pub mod nbd;
pub mod replica;
pub mod sched;
pub mod store;
pub mod volume;
pub mod wire;
mod writer;

pub use volume::{BlockVolume, Extent, ExtentState, VolumeError, ZeroFlags};
