//! Reading a volume's replicas from a storage node, without attaching it: SCAN_READ of the
//! extent's current replicas (in the inference class), one extent at a time.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use volume::client::ReplicaPool;
use volume::sched::class::Class;
use volume::wire::{
    EXTENT_SIZE_BYTES, Op, PAYLOAD_MAX_BYTES, Request, RequestHeader, Status, VolumeId,
    WriteVersion,
};

/// A volume as a reader finds it: its id, size, and the data addresses of the current
/// replicas of each of its pool's PGs.
#[derive(Clone, Debug)]
pub struct VolumeReplicas {
    pub id: u64,
    pub size: u64,
    /// `holders[pg]`.
    pub holders: Vec<Vec<SocketAddr>>,
}

impl VolumeReplicas {
    /// The current replicas of the extent holding `offset`.
    pub fn of(&self, offset: u64) -> &[SocketAddr] {
        if self.holders.is_empty() {
            return &[];
        }
        let extent = offset / EXTENT_SIZE_BYTES;
        let pg = volume::client::pg_of(VolumeId(self.id), extent, self.holders.len());
        &self.holders[pg]
    }
}

/// SCAN_READ of `[offset, offset + len)` (within one extent) from the replica at `addr`.
pub async fn scan_read(
    pool: &ReplicaPool,
    addr: SocketAddr,
    volume: u64,
    offset: u64,
    len: u32,
) -> anyhow::Result<Bytes> {
    let header = RequestHeader {
        op: Op::ScanRead,
        flags: Class::Inference.flags(),
        request_id: 0,
        volume: VolumeId(volume),
        offset,
        len,
        payload_crc: 0,
        attach_epoch: 0,
        version: WriteVersion::NONE,
    };
    // As a probe: a replica that once timed out is asked all the same (a task's read is one
    // request, and a busy node answers again later).
    let reply = pool
        .background_link(addr)
        .probe(Request::new(header))
        .await
        .with_context(|| format!("scan read from {addr}"))?;
    if reply.header.status != Status::Ok {
        bail!(
            "scan read of volume {volume} at {offset}+{len} from {addr}: {:?}{}",
            reply.header.status,
            reply
                .reason()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    if reply.payload.len() != len as usize {
        bail!(
            "scan read from {addr}: {} bytes for {len}",
            reply.payload.len()
        );
    }
    Ok(reply.payload)
}

/// SCAN_READ of `[offset, offset + len)` (within one extent) from the first of `replicas`
/// that answers, and which one did.
pub async fn read_piece(
    pool: &ReplicaPool,
    replicas: &[SocketAddr],
    volume: u64,
    offset: u64,
    len: u32,
) -> anyhow::Result<(Bytes, SocketAddr)> {
    let mut last = None;
    for &addr in replicas {
        match scan_read(pool, addr, volume, offset, len).await {
            Ok(data) => return Ok((data, addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        anyhow::anyhow!("volume {volume}: no current replica holds offset {offset}")
    }))
}

/// `[offset, offset + len)` of `v` (clamped to its size), extent by extent, each from the
/// first of its current replicas that answers.
pub async fn read_range(
    pool: &ReplicaPool,
    v: &VolumeReplicas,
    offset: u64,
    len: u64,
) -> anyhow::Result<Bytes> {
    let end = offset.saturating_add(len).min(v.size);
    let mut out = BytesMut::with_capacity(end.saturating_sub(offset) as usize);
    let mut at = offset;
    while at < end {
        let extent_end = (at / EXTENT_SIZE_BYTES + 1) * EXTENT_SIZE_BYTES;
        let piece = (end.min(extent_end) - at).min(u64::from(PAYLOAD_MAX_BYTES)) as u32;
        let (data, _) = read_piece(pool, v.of(at), v.id, at, piece).await?;
        out.extend_from_slice(&data);
        at += u64::from(piece);
    }
    Ok(out.freeze())
}
