//! Extent versions as bytes. A version entry is 16 bytes, `(epoch u64, seq u64)` little
//! endian; `(0, 0)` means never written. A replica's `versions` file is a sequence of them.
//!
//! The payload of a GET_EXTENT_VERSIONS reply has one 17-byte entry per extent asked about, in
//! extent order: the version entry, then a flags byte whose bit 0 says the replica cannot vouch
//! for the extent's contents (it was being written when the replica crashed) and bit 1 that the
//! extent was written recently (since about the last two flushes; see `replica::intent`). Other
//! flag bits are refused.

use bytes::{BufMut, Bytes, BytesMut};

use super::{PAYLOAD_MAX_BYTES, WriteVersion, le_u64};

/// Bytes of one version entry, on the wire and in a replica's `versions` file.
pub const VERSION_ENTRY_BYTES: usize = 16;

/// Bytes of one extent's entry in a GET_EXTENT_VERSIONS reply.
pub const EXTENT_VERSION_ENTRY_BYTES: usize = VERSION_ENTRY_BYTES + 1;

/// Flag of an extent whose contents its replica cannot vouch for.
const FLAG_SUSPECT: u8 = 1;
/// Flag of an extent written recently.
const FLAG_RECENT: u8 = 2;

/// One extent as a replica reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtentVersion {
    pub version: WriteVersion,
    /// The replica crashed while the extent had writes that were not durable, and it has not
    /// been rewritten whole since: its contents may be torn or older than its version says.
    pub suspect: bool,
    /// The extent was written since about the last two flushes: a writer that died may have
    /// left writes of it on some replicas and not others, under equal versions.
    pub recent: bool,
}

/// Encodes a GET_EXTENT_VERSIONS reply payload.
pub fn encode_extent_versions(extents: &[ExtentVersion]) -> Bytes {
    let len = extents.len() * EXTENT_VERSION_ENTRY_BYTES;
    assert!(len <= PAYLOAD_MAX_BYTES as usize);
    let mut b = BytesMut::with_capacity(len);
    for e in extents {
        b.put_u64_le(e.version.epoch);
        b.put_u64_le(e.version.seq);
        let mut flags = 0;
        if e.suspect {
            flags |= FLAG_SUSPECT;
        }
        if e.recent {
            flags |= FLAG_RECENT;
        }
        b.put_u8(flags);
    }
    b.freeze()
}

/// Decodes a GET_EXTENT_VERSIONS reply payload; `None` if its length is not a whole number of
/// entries or a flags byte has an unknown bit.
pub fn decode_extent_versions(payload: &[u8]) -> Option<Vec<ExtentVersion>> {
    if !payload.len().is_multiple_of(EXTENT_VERSION_ENTRY_BYTES) {
        return None;
    }
    payload
        .chunks_exact(EXTENT_VERSION_ENTRY_BYTES)
        .map(|e| {
            let flags = e[VERSION_ENTRY_BYTES];
            (flags & !(FLAG_SUSPECT | FLAG_RECENT) == 0).then_some(ExtentVersion {
                version: WriteVersion {
                    epoch: le_u64(e, 0),
                    seq: le_u64(e, 8),
                },
                suspect: flags & FLAG_SUSPECT != 0,
                recent: flags & FLAG_RECENT != 0,
            })
        })
        .collect()
}

/// Encodes versions as a `versions` file holds them.
pub fn encode_versions(versions: &[WriteVersion]) -> Bytes {
    let len = versions.len() * VERSION_ENTRY_BYTES;
    assert!(len <= PAYLOAD_MAX_BYTES as usize);
    let mut b = BytesMut::with_capacity(len);
    for v in versions {
        b.put_u64_le(v.epoch);
        b.put_u64_le(v.seq);
    }
    b.freeze()
}

/// Decodes version entries (a `versions` file's bytes); `None` if its length is not a whole number of entries.
pub fn decode_versions(payload: &[u8]) -> Option<Vec<WriteVersion>> {
    if !payload.len().is_multiple_of(VERSION_ENTRY_BYTES) {
        return None;
    }
    Some(
        payload
            .chunks_exact(VERSION_ENTRY_BYTES)
            .map(|e| WriteVersion {
                epoch: le_u64(e, 0),
                seq: le_u64(e, 8),
            })
            .collect(),
    )
}
