//! The replica wire protocol: how a volume client talks to the replica servers that hold its
//! extents. This module is only the codec; it never does IO, so every frame it accepts or
//! refuses can be property tested in isolation.
//!
//! Every frame starts with a fixed, versioned header that carries its own crc32c, so a frame
//! whose header is damaged is refused before any of its fields (notably the payload length)
//! is trusted. Payloads carry a crc32c in the header as well. All integers are little endian.
//!
//! ```text
//! request (72 bytes, then `len` payload bytes for WRITE and CAPABILITY only)
//!  0 magic u32 "FBRQ"   4 version u16   6 op u8   7 flags u8
//!  8 request id u64    16 volume id u64
//! 24 offset u64        32 len u32      36 payload crc32c u32
//! 40 attach epoch u64  48 version epoch u64  56 version seq u64
//! 64 reserved u32 (0)  68 header crc32c u32 (of bytes 0..68)
//!
//! reply (40 bytes, then `payload len` bytes)
//!  0 magic u32 "FBRP"   4 version u16   6 op u8   7 status u8
//!  8 request id u64    16 errno u32    20 payload len u32
//! 24 payload crc32c u32  28 header crc32c u32 (of the header with this field zero)
//! 32 epoch u64 (FENCED: the replica's highest attach epoch)
//! ```
//!
//! Requests are pipelined and replies come back in any order; the request id pairs them.
//! A refusal may carry a payload too: an UNAUTHORIZED reply's is the reason, in UTF-8.
//! A request's `offset` and `len` are bytes of the volume, except for GET_EXTENT_VERSIONS,
//! where they are the first extent index and the number of extents.
//!
//! Code map: [`request`] and [`reply`] hold the frame codecs, [`versions`] the payload of
//! GET_EXTENT_VERSIONS. Start at [`request::RequestHeader`].

pub mod block_status;
pub mod reply;
pub mod request;
pub mod scrub;
pub mod versions;

#[cfg(test)]
mod tests;

pub use reply::{REPLY_HEADER_BYTES, Reply, ReplyHeader, decode_reply, take_large_reply_header};
pub use request::{
    REQUEST_HEADER_BYTES, Request, RequestHeader, decode_request, take_large_request_header,
};
pub use versions::{
    EXTENT_VERSION_ENTRY_BYTES, ExtentVersion, VERSION_ENTRY_BYTES, decode_extent_versions,
    decode_versions, encode_extent_versions, encode_versions,
};

/// Protocol version this build speaks. A peer speaking another is refused, not guessed at.
pub const PROTOCOL_VERSION: u16 = 2;
/// Magic of a request frame: "FBRQ".
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"FBRQ");
/// Magic of a reply frame: "FBRP".
pub const REPLY_MAGIC: u32 = u32::from_le_bytes(*b"FBRP");
/// Size of an extent, the unit of placement and of versions, in bytes.
pub const EXTENT_SIZE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest payload of any frame, in bytes. The client never sends an IO that crosses an
/// extent, so one extent is enough.
pub const PAYLOAD_MAX_BYTES: u32 = EXTENT_SIZE_BYTES as u32;
/// Payloads of at least this many bytes are not gathered in a connection's read buffer: the
/// reader takes the frame's header off ([`take_large_request_header`],
/// [`take_large_reply_header`]) and reads the payload into a buffer of its own, so that an
/// extent-sized payload is neither copied as the read buffer grows nor left unaligned for
/// O_DIRECT.
pub const DIRECT_PAYLOAD_MIN_BYTES: u32 = 64 * 1024;
/// Largest payload of a CAPABILITY request, in bytes: a signed capability is far smaller
/// (see [`crate::capability::SIGNED_CAPABILITY_MAX_BYTES`]), and a frame claiming more is
/// refused before anything is allocated for it.
pub const CAPABILITY_PAYLOAD_MAX_BYTES: u32 = 1024;
/// Longest reason an [`Status::Unauthorized`] reply carries, in bytes.
pub const REASON_MAX_BYTES: usize = 512;
/// Most extents one GET_EXTENT_VERSIONS request may ask about.
pub const VERSIONS_PER_REQUEST_MAX: u32 = PAYLOAD_MAX_BYTES / EXTENT_VERSION_ENTRY_BYTES as u32;

const _: () = assert!(EXTENT_SIZE_BYTES.is_multiple_of(4096));
const _: () = assert!(PAYLOAD_MAX_BYTES as u64 <= EXTENT_SIZE_BYTES);

/// Request flag: the write (or trim, or zeroing) must be durable before the reply.
pub const FLAG_FUA: u8 = 1 << 0;
/// Request flag of WRITE_ZEROES: the range may be deallocated.
pub const FLAG_MAY_TRIM: u8 = 1 << 1;
/// Request flags: the class of work the request belongs to (two bits, see
/// [`crate::sched::class::Class::flags`]); 0 is a client's IO.
pub const FLAGS_CLASS: u8 = crate::sched::class::CLASS_FLAGS_MASK;
/// Every flag this version knows; others are refused.
pub const FLAGS_KNOWN: u8 = FLAG_FUA | FLAG_MAY_TRIM | FLAGS_CLASS;

/// A volume as the replicas know it. Assigned by the metadata service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId(pub u64);

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The version of an extent's last write: the attach epoch of the writer and its sequence
/// number within that epoch. Ordered lexicographically, so a newer attach always wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteVersion {
    pub epoch: u64,
    pub seq: u64,
}

impl WriteVersion {
    /// The version of an extent never written.
    pub const NONE: WriteVersion = WriteVersion { epoch: 0, seq: 0 };
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    Read = 1,
    Write = 2,
    Flush = 3,
    Trim = 4,
    WriteZeroes = 5,
    GetExtentVersions = 6,
    Ping = 7,
    /// The crc32c of a range's contents, read and checked on the replica: the reply's payload
    /// is the crc32c, 4 bytes little endian. Compares copies without moving them.
    Digest = 8,
    /// Which parts of a range (within one extent) hold data: the reply's payload is
    /// [`crate::wire::block_status`] entries. Not fenced: it only reads.
    BlockStatus = 9,
    /// Presents an attach capability ([`crate::capability`]) for the header's volume and
    /// attach epoch; the payload is the signed capability, at most
    /// [`CAPABILITY_PAYLOAD_MAX_BYTES`]. Answered OK or [`Status::Unauthorized`]. A replica
    /// handles it before it reads the connection's next frame, so requests pipelined behind
    /// it are admitted under it.
    Capability = 10,
    /// Checks every block of a range (within one extent) against its stored checksum on the
    /// replica, in the scrub class unless the flags say otherwise: the reply's payload is
    /// [`crate::wire::scrub`]'s verdict, the bad blocks or the range's crc32c. Not fenced: it
    /// only reads, and moves no data.
    Scrub = 11,
    /// Reads a range (within one extent) for a computation near the data, in the inference
    /// class unless the flags say otherwise. Not fenced, so it takes no attach epoch and
    /// needs no capability: a storage node reads another's replica without attaching the
    /// volume (which would fence its writer). A replica serves it only to the peers its
    /// [`crate::replica::ReplicaConfig::scan_readers`] admits.
    ScanRead = 12,
}

impl Op {
    pub fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Read,
            2 => Op::Write,
            3 => Op::Flush,
            4 => Op::Trim,
            5 => Op::WriteZeroes,
            6 => Op::GetExtentVersions,
            7 => Op::Ping,
            8 => Op::Digest,
            9 => Op::BlockStatus,
            10 => Op::Capability,
            11 => Op::Scrub,
            12 => Op::ScanRead,
            _ => return None,
        })
    }

    /// Whether the request changes data, and so carries a write version.
    pub fn mutates(self) -> bool {
        matches!(self, Op::Write | Op::Trim | Op::WriteZeroes)
    }

    /// Whether a replica admits the request through its volume's fence (see
    /// [`crate::replica::fence`]): these ops carry the attach epoch that the replica may
    /// raise, and so, where capabilities are checked, need one for their volume and epoch.
    pub fn fenced(self) -> bool {
        matches!(
            self,
            Op::Read | Op::Write | Op::Flush | Op::Trim | Op::WriteZeroes
        )
    }

    /// Whether the request carries a payload (of its header's `len` bytes).
    pub fn carries_payload(self) -> bool {
        matches!(self, Op::Write | Op::Capability)
    }
}

/// How a replica answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    /// The operation failed; `errno` says how.
    Error = 1,
    /// The request's attach epoch is older than one the replica has seen; `epoch` is that one.
    Fenced = 2,
    /// A block failed its checksum on the replica. Another replica may have a good copy.
    Checksum = 3,
    /// The range is outside the volume or over a limit.
    OutOfRange = 4,
    /// The replica holds no such volume.
    NoVolume = 5,
    /// The request's payload did not match its crc32c.
    PayloadCrc = 6,
    /// The request was well framed but makes no sense (unknown flag, length on a FLUSH, ...).
    BadRequest = 7,
    /// The connection holds no valid capability for the request's volume and attach epoch,
    /// or a presented capability was refused; `errno` is EACCES and the payload says why
    /// (UTF-8, at most [`REASON_MAX_BYTES`]). Nothing was done.
    Unauthorized = 8,
}

impl Status {
    pub fn from_u8(v: u8) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::Error,
            2 => Status::Fenced,
            3 => Status::Checksum,
            4 => Status::OutOfRange,
            5 => Status::NoVolume,
            6 => Status::PayloadCrc,
            7 => Status::BadRequest,
            8 => Status::Unauthorized,
            _ => return None,
        })
    }
}

/// Why a frame was refused. Any of these means the stream cannot be trusted any more: the
/// connection that carried it is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    BadVersion(u16),
    #[error("header checksum mismatch: header says {expected:#010x}, computed {actual:#010x}")]
    HeaderCrc { expected: u32, actual: u32 },
    #[error("unknown op {0}")]
    UnknownOp(u8),
    #[error("unknown status {0}")]
    UnknownStatus(u8),
    #[error("reserved field is {0:#x}, not zero")]
    Reserved(u32),
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge { len: u32, max: u32 },
}

/// crc32c of a payload, the same function as the on-disk checksums.
pub fn payload_crc(data: &[u8]) -> u32 {
    crate::checksum::block_crc(data)
}

/// Little-endian field readers over a header that was already length checked.
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}
