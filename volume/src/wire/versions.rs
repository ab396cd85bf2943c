//! The payload of a GET_EXTENT_VERSIONS reply: one 16-byte entry per extent asked about,
//! `(epoch u64, seq u64)` little endian, in extent order. `(0, 0)` means never written.

use bytes::{BufMut, Bytes, BytesMut};

use super::{PAYLOAD_MAX_BYTES, WriteVersion, le_u64};

/// Bytes of one version entry, on the wire and in a replica's `versions` file.
pub const VERSION_ENTRY_BYTES: usize = 16;

/// Encodes versions for a reply payload.
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

/// Decodes a versions payload; `None` if its length is not a whole number of entries.
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
