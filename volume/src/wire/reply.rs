//! Reply frames: the fixed header and the payload behind it.

use bytes::{Buf, Bytes, BytesMut};

use super::{
    DIRECT_PAYLOAD_MIN_BYTES, Op, PAYLOAD_MAX_BYTES, PROTOCOL_VERSION, REASON_MAX_BYTES,
    REPLY_MAGIC, Status, WireError, le_u16, le_u32, le_u64, payload_crc,
};

/// Size of a reply header, in bytes.
pub const REPLY_HEADER_BYTES: usize = 40;
/// Where the header crc sits. The epoch follows it, so the crc is computed over the whole
/// header with this field taken as zero.
const REPLY_CRC_AT: usize = 28;

/// A reply header, decoded and checked as a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyHeader {
    pub op: Op,
    pub status: Status,
    pub request_id: u64,
    /// The errno of a [`Status::Error`], zero otherwise.
    pub errno: u32,
    pub payload_len: u32,
    pub payload_crc: u32,
    /// For [`Status::Fenced`], the highest attach epoch the replica has seen.
    pub epoch: u64,
}

impl ReplyHeader {
    pub fn encode(&self) -> [u8; REPLY_HEADER_BYTES] {
        let mut b = [0u8; REPLY_HEADER_BYTES];
        b[0..4].copy_from_slice(&REPLY_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[6] = self.op as u8;
        b[7] = self.status as u8;
        b[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.errno.to_le_bytes());
        b[20..24].copy_from_slice(&self.payload_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.payload_crc.to_le_bytes());
        b[32..40].copy_from_slice(&self.epoch.to_le_bytes());
        let crc = header_crc(&b);
        b[REPLY_CRC_AT..REPLY_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header: magic, version and crc first, then the fields.
    pub fn decode(b: &[u8; REPLY_HEADER_BYTES]) -> Result<ReplyHeader, WireError> {
        let magic = le_u32(b, 0);
        if magic != REPLY_MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let version = le_u16(b, 4);
        if version != PROTOCOL_VERSION {
            return Err(WireError::BadVersion(version));
        }
        let expected = le_u32(b, REPLY_CRC_AT);
        let actual = header_crc(b);
        if expected != actual {
            return Err(WireError::HeaderCrc { expected, actual });
        }
        let op = Op::from_u8(b[6]).ok_or(WireError::UnknownOp(b[6]))?;
        let status = Status::from_u8(b[7]).ok_or(WireError::UnknownStatus(b[7]))?;
        let payload_len = le_u32(b, 20);
        if payload_len > PAYLOAD_MAX_BYTES {
            return Err(WireError::PayloadTooLarge {
                len: payload_len,
                max: PAYLOAD_MAX_BYTES,
            });
        }
        Ok(ReplyHeader {
            op,
            status,
            request_id: le_u64(b, 8),
            errno: le_u32(b, 16),
            payload_len,
            payload_crc: le_u32(b, 24),
            epoch: le_u64(b, 32),
        })
    }
}

/// crc32c of a reply header with its crc field taken as zero.
fn header_crc(b: &[u8; REPLY_HEADER_BYTES]) -> u32 {
    let mut copy = *b;
    copy[REPLY_CRC_AT..REPLY_CRC_AT + 4].fill(0);
    payload_crc(&copy)
}

/// A whole reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub header: ReplyHeader,
    pub payload: Bytes,
}

impl Reply {
    /// A successful reply carrying `payload` (possibly empty).
    pub fn ok(op: Op, request_id: u64, payload: Bytes) -> Reply {
        let crc = payload_crc(&payload);
        Reply::ok_with_crc(op, request_id, payload, crc)
    }

    /// [`Reply::ok`] for a payload whose crc32c the caller has already (a store read derives
    /// it from the checksums of the blocks it read).
    pub fn ok_with_crc(op: Op, request_id: u64, payload: Bytes, crc: u32) -> Reply {
        assert!(payload.len() <= PAYLOAD_MAX_BYTES as usize);
        debug_assert_eq!(crc, payload_crc(&payload), "the crc given is the payload's");
        Reply {
            header: ReplyHeader {
                op,
                status: Status::Ok,
                request_id,
                errno: 0,
                payload_len: payload.len() as u32,
                payload_crc: crc,
                epoch: 0,
            },
            payload,
        }
    }

    /// A refusal or failure without payload.
    pub fn status(op: Op, request_id: u64, status: Status, errno: u32, epoch: u64) -> Reply {
        assert_ne!(status, Status::Ok, "a success is built with Reply::ok");
        Reply {
            header: ReplyHeader {
                op,
                status,
                request_id,
                errno,
                payload_len: 0,
                payload_crc: payload_crc(&[]),
                epoch,
            },
            payload: Bytes::new(),
        }
    }

    /// A refusal that says why in its payload (cut to [`REASON_MAX_BYTES`], at a character
    /// boundary).
    pub fn refused(op: Op, request_id: u64, status: Status, errno: u32, reason: &str) -> Reply {
        let mut end = reason.len().min(REASON_MAX_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let payload = Bytes::copy_from_slice(&reason.as_bytes()[..end]);
        let mut reply = Reply::status(op, request_id, status, errno, 0);
        reply.header.payload_len = payload.len() as u32;
        reply.header.payload_crc = payload_crc(&payload);
        reply.payload = payload;
        reply
    }

    /// The reason a refusal carries, if any (lossy: it is for people, not for parsing).
    pub fn reason(&self) -> Option<String> {
        if self.header.status == Status::Ok || self.payload.is_empty() {
            return None;
        }
        Some(String::from_utf8_lossy(&self.payload).into_owned())
    }

    /// Whether the payload matches the crc32c its header carries.
    pub fn payload_intact(&self) -> bool {
        payload_crc(&self.payload) == self.header.payload_crc
    }

    pub fn encode_header(&self) -> [u8; REPLY_HEADER_BYTES] {
        assert_eq!(self.payload.len(), self.header.payload_len as usize);
        self.header.encode()
    }
}

/// Takes one whole reply off the front of `buf`, if one is there; see
/// [`decode_request`](super::decode_request) for the contract.
pub fn decode_reply(buf: &mut BytesMut) -> Result<Option<Reply>, WireError> {
    let Some(head) = buf.get(..REPLY_HEADER_BYTES) else {
        return Ok(None);
    };
    let head: &[u8; REPLY_HEADER_BYTES] = head.try_into().expect("sliced to the header size");
    let header = ReplyHeader::decode(head)?;
    let frame_len = REPLY_HEADER_BYTES + header.payload_len as usize;
    if buf.len() < frame_len {
        // A large payload is read into a buffer of its own (see `take_large_reply_header`).
        if header.payload_len < DIRECT_PAYLOAD_MIN_BYTES {
            buf.reserve(frame_len - buf.len());
        }
        return Ok(None);
    }
    let mut frame = buf.split_to(frame_len);
    let payload = frame.split_off(REPLY_HEADER_BYTES).freeze();
    Ok(Some(Reply { header, payload }))
}

/// The reply counterpart of
/// [`take_large_request_header`](super::request::take_large_request_header).
pub fn take_large_reply_header(buf: &mut BytesMut) -> Result<Option<ReplyHeader>, WireError> {
    let Some(head) = buf.get(..REPLY_HEADER_BYTES) else {
        return Ok(None);
    };
    let head: &[u8; REPLY_HEADER_BYTES] = head.try_into().expect("sliced to the header size");
    let header = ReplyHeader::decode(head)?;
    let payload_len = header.payload_len as usize;
    if header.payload_len < DIRECT_PAYLOAD_MIN_BYTES
        || buf.len() >= REPLY_HEADER_BYTES + payload_len
    {
        return Ok(None);
    }
    buf.advance(REPLY_HEADER_BYTES);
    Ok(Some(header))
}
