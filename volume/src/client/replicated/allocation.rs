//! Which parts of a volume hold data, for NBD's BLOCK_STATUS: each extent of the range is asked
//! of one live replica of its group (the first that answers, as a read would be served), up to
//! [`STATUS_EXTENTS_MAX`] extents at once, so that a client mapping a large, mostly empty
//! volume needs few requests. Any failure, or a replica too old to know the op, gives "all
//! data" for that extent: always a correct answer, only a less useful one, so a failed status
//! never takes a replica out of its acting set.

use std::sync::Arc;

use futures::StreamExt;

use crate::volume::{Extent, ExtentState};
use crate::wire::{EXTENT_SIZE_BYTES, Op, Request, Status, WriteVersion, block_status};

use super::Inner;

/// Extents one BLOCK_STATUS answer covers at most (256 MiB with 4 MiB extents): the client
/// asks again for the rest.
pub const STATUS_EXTENTS_MAX: u64 = 64;
/// Extents asked about at once.
pub const STATUS_EXTENTS_IN_FLIGHT_MAX: usize = 16;

impl Inner {
    /// The allocation of `[offset, offset + len)` (checked by the caller), up to
    /// [`STATUS_EXTENTS_MAX`] extents of it, in order.
    pub(super) async fn block_status(self: &Arc<Self>, offset: u64, len: u64) -> Vec<Extent> {
        let first = offset / EXTENT_SIZE_BYTES;
        let end = (offset + len).min((first + STATUS_EXTENTS_MAX) * EXTENT_SIZE_BYTES);
        let pieces = (first..).map_while(|extent| {
            let start = offset.max(extent * EXTENT_SIZE_BYTES);
            (start < end).then(|| (start, ((extent + 1) * EXTENT_SIZE_BYTES).min(end) - start))
        });
        futures::stream::iter(pieces)
            .map(|(start, len)| self.extent_status(start, len))
            .buffered(STATUS_EXTENTS_IN_FLIGHT_MAX)
            .concat()
            .await
    }

    /// The allocation of `[offset, offset + len)`, which lies within one extent.
    async fn extent_status(self: &Arc<Self>, offset: u64, len: u64) -> Vec<Extent> {
        let extent = offset / EXTENT_SIZE_BYTES;
        let header = self.header(
            Op::BlockStatus,
            offset,
            u32::try_from(len).expect("an extent's range fits in u32"),
            0,
            WriteVersion::NONE,
        );
        for replica in self.members(self.group_of(extent)).iter() {
            if !replica.is_live() {
                continue;
            }
            match replica.link.call(Request::new(header)).await {
                Ok(reply) if reply.header.status == Status::Ok => {
                    if let Some(extents) = block_status::decode(&reply.payload, len) {
                        return extents;
                    }
                    tracing::debug!(replica = %replica.addr(), "malformed block status answer");
                }
                Ok(reply) => {
                    tracing::debug!(replica = %replica.addr(), status = ?reply.header.status, "block status not answered");
                }
                Err(e) => {
                    tracing::debug!(replica = %replica.addr(), error = %e, "block status not answered");
                }
            }
        }
        vec![Extent {
            len,
            state: ExtentState {
                hole: false,
                zero: false,
            },
        }]
    }
}
