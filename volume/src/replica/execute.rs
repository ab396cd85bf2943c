//! Runs one decoded request against the replica's state and builds its reply. Every refusal's
//! status is decided here.

use bytes::Bytes;

use crate::sched::class::Class;
use crate::volume::{BlockVolume, VolumeError, ZeroFlags};
use crate::wire::{
    EXTENT_SIZE_BYTES, FLAG_FUA, FLAG_MAY_TRIM, FLAGS_KNOWN, Op, PAYLOAD_MAX_BYTES, Reply, Request,
    Status, VERSIONS_PER_REQUEST_MAX, WriteVersion, encode_extent_versions,
};

use super::{ReplicaServer, ReplicaVolume};

const EIO: u32 = libc::EIO as u32;

/// Answers `req`. Never fails: every failure is a status in the reply.
pub(super) async fn execute(server: &ReplicaServer, req: Request) -> Reply {
    let h = req.header;
    let refuse = |status| Reply::status(h.op, h.request_id, status, 0, 0);
    if h.flags & !FLAGS_KNOWN != 0 {
        return refuse(Status::BadRequest);
    }
    let class = Class::from_flags(h.flags);
    if h.op == Op::Capability {
        // The connection answers it itself, in frame order (see `connection`); one that
        // reached here was not presented, so it is not acknowledged either.
        debug_assert!(false, "CAPABILITY is the connection's to answer");
        return refuse(Status::BadRequest);
    }
    if h.op == Op::Ping {
        return match server.power().await {
            Ok(power) => Reply::ok(
                h.op,
                h.request_id,
                Bytes::copy_from_slice(&power.epoch.to_le_bytes()),
            ),
            Err(e) => {
                tracing::error!(error = %e, "power record cannot be read");
                Reply::status(h.op, h.request_id, Status::Error, EIO, 0)
            }
        };
    }
    let vol = match server.volume(h.volume).await {
        Ok(Some(v)) => v,
        Ok(None) => return refuse(Status::NoVolume),
        Err(e) => {
            tracing::error!(volume = %h.volume, error = %e, "replica state of volume cannot be opened");
            return Reply::status(h.op, h.request_id, Status::Error, EIO, 0);
        }
    };
    if h.op == Op::GetExtentVersions {
        // Not fenced: resync and rebuild read versions on behalf of the control plane.
        let (first, count) = (h.offset, u64::from(h.len));
        if h.len > VERSIONS_PER_REQUEST_MAX
            || first
                .checked_add(count)
                .is_none_or(|end| end > vol.extent_count())
        {
            return refuse(Status::OutOfRange);
        }
        let extents = vol.extents(first, count);
        return Reply::ok(h.op, h.request_id, encode_extent_versions(&extents));
    }
    // A mutation carries its version; only a reset (a trim of whole extents back to never
    // written, as a copy of an extent its source never wrote) carries none.
    if h.op.mutates() && h.version == WriteVersion::NONE && !is_reset(&vol, &h) {
        return refuse(Status::BadRequest);
    }
    if h.op == Op::Digest {
        // Not fenced: like GET_EXTENT_VERSIONS, it only reads.
        if !in_range(&vol, Op::Read, h.offset, h.len) {
            return refuse(Status::OutOfRange);
        }
        let _turn = server
            .scheduler()
            .turn(class, h.volume.0, io_bytes(&h))
            .await;
        return match vol.local.read_with_crc(h.offset, h.len).await {
            Ok((data, crc)) => {
                let crc = crc.unwrap_or_else(|| crate::wire::payload_crc(&data));
                Reply::ok(
                    h.op,
                    h.request_id,
                    Bytes::copy_from_slice(&crc.to_le_bytes()),
                )
            }
            Err(VolumeError::Checksum { .. }) => refuse(Status::Checksum),
            Err(e) => Reply::status(h.op, h.request_id, Status::Error, e.errno(), 0),
        };
    }
    if h.op == Op::Scrub {
        // Not fenced: it reads, and what it finds only leaves the replica as offsets.
        if h.len == 0 || !in_range(&vol, Op::Read, h.offset, h.len) || h.extents().count() != 1 {
            return refuse(Status::OutOfRange);
        }
        let _turn = server
            .scheduler()
            .turn(class, h.volume.0, io_bytes(&h))
            .await;
        return match vol.local.scrub(h.offset, u64::from(h.len)).await {
            Ok(found) => Reply::ok(
                h.op,
                h.request_id,
                crate::wire::scrub::encode(&found.bad, found.crc),
            ),
            Err(e) => Reply::status(h.op, h.request_id, Status::Error, e.errno(), 0),
        };
    }
    if h.op == Op::BlockStatus {
        // Not fenced either: which blocks hold data is a read.
        if h.len == 0 || !in_range(&vol, h.op, h.offset, h.len) || h.extents().count() != 1 {
            return refuse(Status::OutOfRange);
        }
        return match vol.local.block_status(h.offset, u64::from(h.len)).await {
            Ok(extents) => Reply::ok(
                h.op,
                h.request_id,
                crate::wire::block_status::encode(&extents),
            ),
            Err(e) => Reply::status(h.op, h.request_id, Status::Error, e.errno(), 0),
        };
    }
    if h.op == Op::ScanRead {
        // Not fenced: who may ask was checked by the connection (see `grants`).
        if h.len == 0
            || h.len > PAYLOAD_MAX_BYTES
            || !in_range(&vol, h.op, h.offset, h.len)
            || h.extents().count() != 1
        {
            return refuse(Status::OutOfRange);
        }
        let _turn = server
            .scheduler()
            .turn(class, h.volume.0, io_bytes(&h))
            .await;
        return match vol.local.read_with_crc(h.offset, h.len).await {
            Ok((data, Some(crc))) => Reply::ok_with_crc(h.op, h.request_id, data, crc),
            Ok((data, None)) => Reply::ok(h.op, h.request_id, data),
            Err(VolumeError::Checksum { .. }) => refuse(Status::Checksum),
            Err(e) => Reply::status(h.op, h.request_id, Status::Error, e.errno(), 0),
        };
    }
    if h.op != Op::Flush && !in_range(&vol, h.op, h.offset, h.len) {
        return refuse(Status::OutOfRange);
    }
    if h.op == Op::Flush && (h.offset != 0 || h.len != 0) {
        return refuse(Status::BadRequest);
    }

    // Its turn at the disk before its epoch is admitted: a request a limit holds back must
    // not hold back a fence. A flush waits for no turn: it only makes earlier IO durable,
    // and those IO had theirs.
    let _turn = match h.op {
        Op::Flush => None,
        _ => Some(
            server
                .scheduler()
                .turn(class, h.volume.0, io_bytes(&h))
                .await,
        ),
    };
    let _admitted = match vol.fence.admit(h.attach_epoch).await {
        Ok(Ok(guard)) => guard,
        Ok(Err(fenced)) => {
            tracing::info!(volume = %h.volume, epoch = h.attach_epoch, current = fenced.current, "stale request fenced");
            return Reply::status(h.op, h.request_id, Status::Fenced, 0, fenced.current);
        }
        Err(e) => {
            tracing::error!(volume = %h.volume, error = %e, "attach epoch cannot be persisted");
            return Reply::status(h.op, h.request_id, Status::Error, EIO, 0);
        }
    };
    match run(&vol, &req).await {
        Ok((payload, Some(crc))) => Reply::ok_with_crc(h.op, h.request_id, payload, crc),
        Ok((payload, None)) => Reply::ok(h.op, h.request_id, payload),
        Err(e) => {
            let status = match e {
                VolumeError::Checksum { .. } => Status::Checksum,
                VolumeError::PayloadCrc => {
                    tracing::warn!(volume = %h.volume, offset = h.offset, "write payload failed its crc32c");
                    Status::PayloadCrc
                }
                VolumeError::OutOfRange { .. } | VolumeError::TooLarge { .. } => Status::OutOfRange,
                _ => Status::Error,
            };
            Reply::status(h.op, h.request_id, status, e.errno(), 0)
        }
    }
}

/// Bytes the disk moves for `h`, as its scheduler counts them: trims and zeroings move none
/// (one IO each).
fn io_bytes(h: &crate::wire::RequestHeader) -> u64 {
    match h.op {
        Op::Trim | Op::WriteZeroes => 0,
        _ => u64::from(h.len),
    }
}

/// Whether `h` is a trim of whole extents without a version: a reset to never written.
fn is_reset(vol: &ReplicaVolume, h: &crate::wire::RequestHeader) -> bool {
    let len = u64::from(h.len);
    h.op == Op::Trim
        && h.version == WriteVersion::NONE
        && h.len > 0
        && h.offset.checked_add(len).is_some()
        && whole_extents(vol, h.offset, len) == h.extents()
}

/// Extents `[offset, offset + len)` covers whole (the volume's last extent may be short).
fn whole_extents(vol: &ReplicaVolume, offset: u64, len: u64) -> std::ops::Range<u64> {
    let end = offset + len;
    let first = offset.div_ceil(EXTENT_SIZE_BYTES);
    let last = if end == vol.local.size() {
        end.div_ceil(EXTENT_SIZE_BYTES)
    } else {
        end / EXTENT_SIZE_BYTES
    };
    first..last.max(first)
}

/// Whether the op's range lies within the volume and its limits.
fn in_range(vol: &ReplicaVolume, op: Op, offset: u64, len: u32) -> bool {
    if op == Op::Read && len > PAYLOAD_MAX_BYTES {
        return false;
    }
    offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= vol.local.size())
}

/// The store operation, then (for mutations) the version record; see `versions` for why in
/// this order. Returns the reply's payload and, when the store derived it, its crc32c.
///
/// A write's payload is checked against its crc32c by the store, from the checksums it
/// computes for the blocks anyway, and a read's crc32c comes from the checksums it verified:
/// each byte a replica moves is checksummed once.
async fn run(vol: &ReplicaVolume, req: &Request) -> Result<(Bytes, Option<u32>), VolumeError> {
    let h = &req.header;
    let fua = h.flags & FLAG_FUA != 0;
    let len = u64::from(h.len);
    let (first, end) = (h.extents().start, h.extents().end);
    // A mutation's extents are marked durably before its data is written (see `intent`).
    let _mutating = if h.op.mutates() && len > 0 {
        Some(vol.intent.mutate(first, end).await?)
    } else {
        None
    };
    let stored = store(vol, req, fua).await;
    if stored.is_err() && h.op.mutates() && len > 0 {
        vol.intent.failed(first, end).await?;
    }
    if h.op == Op::Read || h.op == Op::Flush {
        return stored;
    }
    stored?;
    if len > 0 {
        if h.version == WriteVersion::NONE {
            vol.versions.reset(first, end).await?;
        } else {
            vol.versions.record(first, end, h.version).await?;
        }
        if fua {
            vol.versions.sync().await?;
        }
        vol.intent.rewrote(h.offset, len, vol.local.size()).await?;
    }
    Ok((Bytes::new(), None))
}

/// The store operation of `req` (for a flush, also the versions' and the intents' part).
async fn store(
    vol: &ReplicaVolume,
    req: &Request,
    fua: bool,
) -> Result<(Bytes, Option<u32>), VolumeError> {
    let h = &req.header;
    let len = u64::from(h.len);
    match h.op {
        Op::Read => return vol.local.read_with_crc(h.offset, h.len).await,
        Op::Write => {
            assert_eq!(
                req.payload.len() as u64,
                len,
                "the codec framed the payload"
            );
            let (data, crc) = (req.payload.clone(), h.payload_crc);
            vol.local.write_checked(h.offset, data, fua, crc).await?;
        }
        Op::Trim => vol.local.trim(h.offset, len, fua).await?,
        Op::WriteZeroes => {
            let flags = ZeroFlags {
                may_trim: h.flags & FLAG_MAY_TRIM != 0,
                fua,
                fast: false,
            };
            vol.local.write_zeroes(h.offset, len, flags).await?;
        }
        Op::Flush => {
            let ticket = vol.intent.flush_started();
            vol.local.flush().await?;
            vol.versions.sync().await?;
            vol.intent.flush_completed(ticket).await?;
            return Ok((Bytes::new(), None));
        }
        Op::GetExtentVersions
        | Op::Ping
        | Op::Digest
        | Op::BlockStatus
        | Op::Scrub
        | Op::ScanRead
        | Op::Capability => {
            unreachable!("answered before admission")
        }
    }
    Ok((Bytes::new(), None))
}
