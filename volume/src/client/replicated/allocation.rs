//! Which parts of a volume hold data, for NBD's BLOCK_STATUS: asked of one live replica of the
//! extent's group (the first that answers, as a read would be served), within that one extent.
//! Any failure, or a replica too old to know the op, gives "all data": always a correct answer,
//! only a less useful one, so a failed status never takes a replica out of its acting set.

use std::sync::Arc;

use crate::volume::{Extent, ExtentState};
use crate::wire::{EXTENT_SIZE_BYTES, Op, Request, Status, WriteVersion, block_status};

use super::Inner;

impl Inner {
    /// The allocation of `[offset, offset + len)` (checked by the caller), up to the end of
    /// the extent `offset` is in.
    pub(super) async fn block_status(self: &Arc<Self>, offset: u64, len: u64) -> Vec<Extent> {
        let extent = offset / EXTENT_SIZE_BYTES;
        let len = len.min((extent + 1) * EXTENT_SIZE_BYTES - offset);
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
