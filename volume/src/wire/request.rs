//! Request frames: the fixed header and, for WRITE and CAPABILITY, the payload behind it.

use bytes::{Buf, Bytes, BytesMut};

use super::{
    CAPABILITY_PAYLOAD_MAX_BYTES, DIRECT_PAYLOAD_MIN_BYTES, EXTENT_SIZE_BYTES, Op,
    PAYLOAD_MAX_BYTES, PROTOCOL_VERSION, REQUEST_MAGIC, VolumeId, WireError, WriteVersion, le_u16,
    le_u32, le_u64, payload_crc,
};

/// Size of a request header, in bytes.
pub const REQUEST_HEADER_BYTES: usize = 72;
/// Bytes of the header covered by its crc32c (everything before the crc itself).
const REQUEST_CRC_COVERS_BYTES: usize = REQUEST_HEADER_BYTES - 4;

/// A request header, decoded and checked as a frame (not yet against any volume).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub op: Op,
    pub flags: u8,
    pub request_id: u64,
    pub volume: VolumeId,
    pub offset: u64,
    pub len: u32,
    pub payload_crc: u32,
    pub attach_epoch: u64,
    pub version: WriteVersion,
}

impl RequestHeader {
    /// A PING: answered with the replica's power epoch, touching no volume.
    pub fn ping(request_id: u64) -> RequestHeader {
        RequestHeader {
            op: Op::Ping,
            flags: 0,
            request_id,
            volume: VolumeId(0),
            offset: 0,
            len: 0,
            payload_crc: 0,
            attach_epoch: 0,
            version: WriteVersion::NONE,
        }
    }

    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.op.carries_payload() {
            self.len
        } else {
            0
        }
    }

    /// The most payload this header's op may carry, in bytes.
    fn payload_max(&self) -> u32 {
        match self.op {
            Op::Capability => CAPABILITY_PAYLOAD_MAX_BYTES,
            _ => PAYLOAD_MAX_BYTES,
        }
    }

    /// The extents `[offset, offset + len)` touches. For a range known not to overflow.
    pub fn extents(&self) -> std::ops::Range<u64> {
        let end = self.offset + u64::from(self.len);
        self.offset / EXTENT_SIZE_BYTES..end.div_ceil(EXTENT_SIZE_BYTES)
    }

    pub fn encode(&self) -> [u8; REQUEST_HEADER_BYTES] {
        let mut b = [0u8; REQUEST_HEADER_BYTES];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[6] = self.op as u8;
        b[7] = self.flags;
        b[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.volume.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..36].copy_from_slice(&self.len.to_le_bytes());
        b[36..40].copy_from_slice(&self.payload_crc.to_le_bytes());
        b[40..48].copy_from_slice(&self.attach_epoch.to_le_bytes());
        b[48..56].copy_from_slice(&self.version.epoch.to_le_bytes());
        b[56..64].copy_from_slice(&self.version.seq.to_le_bytes());
        // 64..68 reserved, zero.
        let crc = payload_crc(&b[..REQUEST_CRC_COVERS_BYTES]);
        b[68..72].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header. Checks, in order: magic, version, header crc, op, reserved bits,
    /// payload limit. Nothing in the header is trusted before its crc matched.
    pub fn decode(b: &[u8; REQUEST_HEADER_BYTES]) -> Result<RequestHeader, WireError> {
        let magic = le_u32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let version = le_u16(b, 4);
        if version != PROTOCOL_VERSION {
            return Err(WireError::BadVersion(version));
        }
        let expected = le_u32(b, 68);
        let actual = payload_crc(&b[..REQUEST_CRC_COVERS_BYTES]);
        if expected != actual {
            return Err(WireError::HeaderCrc { expected, actual });
        }
        let op = Op::from_u8(b[6]).ok_or(WireError::UnknownOp(b[6]))?;
        let reserved = le_u32(b, 64);
        if reserved != 0 {
            return Err(WireError::Reserved(reserved));
        }
        let header = RequestHeader {
            op,
            flags: b[7],
            request_id: le_u64(b, 8),
            volume: VolumeId(le_u64(b, 16)),
            offset: le_u64(b, 24),
            len: le_u32(b, 32),
            payload_crc: le_u32(b, 36),
            attach_epoch: le_u64(b, 40),
            version: WriteVersion {
                epoch: le_u64(b, 48),
                seq: le_u64(b, 56),
            },
        };
        if header.payload_len() > header.payload_max() {
            return Err(WireError::PayloadTooLarge {
                len: header.payload_len(),
                max: header.payload_max(),
            });
        }
        Ok(header)
    }
}

/// A whole request: header and payload (empty unless WRITE or CAPABILITY).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub header: RequestHeader,
    pub payload: Bytes,
}

impl Request {
    /// A request without payload. `len` is the range length (or extent count).
    pub fn new(header: RequestHeader) -> Request {
        assert!(
            !header.op.carries_payload(),
            "{:?} carries a payload",
            header.op
        );
        let header = RequestHeader {
            payload_crc: payload_crc(&[]),
            ..header
        };
        Request {
            header,
            payload: Bytes::new(),
        }
    }

    /// A CAPABILITY presenting `signed` (an encoded
    /// [`SignedCapability`](crate::capability::SignedCapability)) for `volume` at
    /// `attach_epoch`, the volume and epoch it names.
    pub fn capability(
        request_id: u64,
        volume: VolumeId,
        attach_epoch: u64,
        signed: Bytes,
    ) -> Request {
        assert!(signed.len() <= CAPABILITY_PAYLOAD_MAX_BYTES as usize);
        let header = RequestHeader {
            op: Op::Capability,
            flags: 0,
            request_id,
            volume,
            offset: 0,
            len: signed.len() as u32,
            payload_crc: payload_crc(&signed),
            attach_epoch,
            version: WriteVersion::NONE,
        };
        Request {
            header,
            payload: signed,
        }
    }

    /// A WRITE of `payload`; sets the header's length and payload crc from it.
    pub fn write(header: RequestHeader, payload: Bytes) -> Request {
        let crc = payload_crc(&payload);
        Request::write_with_crc(header, payload, crc)
    }

    /// A WRITE of `payload` passed on with the crc32c it arrived with (a copy from one replica
    /// to another), unchecked here: the receiving replica checks it, end to end.
    pub fn write_with_crc(header: RequestHeader, payload: Bytes, crc: u32) -> Request {
        assert_eq!(header.op, Op::Write);
        assert!(payload.len() <= PAYLOAD_MAX_BYTES as usize);
        let header = RequestHeader {
            len: payload.len() as u32,
            payload_crc: crc,
            ..header
        };
        Request { header, payload }
    }

    /// Whether the payload matches the crc32c its header carries.
    pub fn payload_intact(&self) -> bool {
        payload_crc(&self.payload) == self.header.payload_crc
    }

    /// The frame's header bytes; the payload follows them on the wire.
    pub fn encode_header(&self) -> [u8; REQUEST_HEADER_BYTES] {
        assert_eq!(self.payload.len(), self.header.payload_len() as usize);
        self.header.encode()
    }
}

/// Takes one whole request off the front of `buf`, if one is there. `Ok(None)` means more
/// bytes are needed; an error means the stream is broken and must be closed. A damaged
/// payload is not an error here (see [`Request::payload_intact`]): the frame is intact, so
/// the request can be answered and the stream continues.
pub fn decode_request(buf: &mut BytesMut) -> Result<Option<Request>, WireError> {
    let Some(head) = buf.get(..REQUEST_HEADER_BYTES) else {
        return Ok(None);
    };
    let head: &[u8; REQUEST_HEADER_BYTES] = head.try_into().expect("sliced to the header size");
    let header = RequestHeader::decode(head)?;
    let frame_len = REQUEST_HEADER_BYTES + header.payload_len() as usize;
    if buf.len() < frame_len {
        // A large payload is read into a buffer of its own (see `take_large_request_header`).
        if header.payload_len() < DIRECT_PAYLOAD_MIN_BYTES {
            buf.reserve(frame_len - buf.len());
        }
        return Ok(None);
    }
    let mut frame = buf.split_to(frame_len);
    let payload = frame.split_off(REQUEST_HEADER_BYTES).freeze();
    Ok(Some(Request { header, payload }))
}

/// When the frame at the front of `buf` has a whole header and a payload of at least
/// [`DIRECT_PAYLOAD_MIN_BYTES`] that has not all arrived, takes the header off `buf` and
/// returns it; the payload's first bytes stay at the front of `buf`, and the caller reads the
/// payload into a buffer of its own. `Ok(None)` leaves `buf` as it was.
pub fn take_large_request_header(buf: &mut BytesMut) -> Result<Option<RequestHeader>, WireError> {
    let Some(head) = buf.get(..REQUEST_HEADER_BYTES) else {
        return Ok(None);
    };
    let head: &[u8; REQUEST_HEADER_BYTES] = head.try_into().expect("sliced to the header size");
    let header = RequestHeader::decode(head)?;
    let payload_len = header.payload_len() as usize;
    if header.payload_len() < DIRECT_PAYLOAD_MIN_BYTES
        || buf.len() >= REQUEST_HEADER_BYTES + payload_len
    {
        return Ok(None);
    }
    buf.advance(REQUEST_HEADER_BYTES);
    Ok(Some(header))
}
