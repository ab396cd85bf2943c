//! Reads: one live replica per piece, the first of the group preferred, failing over to the
//! next on any error or checksum failure. A replica that fails is reported and its removal
//! runs beside the read, which moves on at once: a read never waits for the metadata service.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use crate::client::IO_SIZE_MAX_BYTES;
use crate::client::bounded::{PieceFuture, run_bounded};
use crate::client::link::Outcome;
use crate::client::split::{Piece, split};
use crate::volume::VolumeError;
use crate::wire::{Op, Request, WriteVersion};

use super::Inner;
use super::members::Replica;

impl Inner {
    /// Reads one piece from the first live replica that returns good data; replicas that
    /// returned a checksum failure on the way are repaired from it.
    async fn read_piece(self: Arc<Self>, piece: Piece) -> Result<Bytes, VolumeError> {
        let group = self.group_of(piece.extent);
        let header = self.header(Op::Read, piece.offset, piece.len, 0, WriteVersion::NONE);
        let mut tried = Vec::new();
        let mut corrupt: Vec<Arc<Replica>> = Vec::new();
        for replica in self.members(group).iter() {
            if !replica.is_live() {
                continue;
            }
            let addr = replica.addr();
            match replica.read(Request::new(header)).await {
                Outcome::Acked(data) if data.len() == piece.len as usize => {
                    for bad in corrupt {
                        self.start_repair(bad, Arc::clone(replica), piece.offset, piece.len);
                    }
                    return Ok(data);
                }
                Outcome::Acked(data) => {
                    let why = format!("read of {} bytes returned {}", piece.len, data.len());
                    tried.push(format!("{addr}: {why}"));
                    self.failed(group, replica, why);
                }
                Outcome::Fenced(current) => return Err(self.fence(current)),
                Outcome::Corrupt => {
                    self.observer
                        .block_corrupt(self.volume(), addr, piece.offset);
                    corrupt.push(Arc::clone(replica));
                    tried.push(format!("{addr}: checksum failure"));
                }
                Outcome::Failed(why) => {
                    tried.push(format!("{addr}: {why}"));
                    self.failed(group, replica, why);
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

    pub(super) async fn read(self: Arc<Self>, offset: u64, len: u32) -> Result<Bytes, VolumeError> {
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
}
