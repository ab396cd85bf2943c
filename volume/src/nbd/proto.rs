//! Wire constants and frame codecs of the NBD protocol, without IO.
//!
//! Everything here works on byte slices and [`BytesMut`], so it can be unit tested, fuzzed and
//! benchmarked without a socket. All integers on the wire are big-endian. Values follow the
//! protocol document (`doc/proto.md` of the NBD project); names keep the document's spelling so
//! that a reader can grep one against the other.

use bytes::{BufMut, BytesMut};

// ---- Handshake ----------------------------------------------------------------------------

/// `NBDMAGIC`, the first eight bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: sent by the server after [`NBD_MAGIC`] and by the client before every option.
pub const NBD_OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const NBD_REP_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flag: the server speaks fixed newstyle.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands; any other bit ends the connection.
pub const NBD_FLAG_C_KNOWN: u32 = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

/// Bytes of the greeting: two magics and the handshake flags.
pub const GREETING_BYTES: usize = 18;
/// Bytes of an option request header: magic, option, data length.
pub const OPTION_HEADER_BYTES: usize = 16;
/// Bytes of an option reply header: magic, option, reply type, data length.
pub const OPTION_REPLY_HEADER_BYTES: usize = 20;
/// Zero padding after the `NBD_OPT_EXPORT_NAME` reply unless `NBD_FLAG_C_NO_ZEROES`.
pub const EXPORT_NAME_PADDING_BYTES: usize = 124;

pub const NBD_OPT_EXPORT_NAME: u32 = 1;
pub const NBD_OPT_ABORT: u32 = 2;
pub const NBD_OPT_LIST: u32 = 3;
pub const NBD_OPT_STARTTLS: u32 = 5;
pub const NBD_OPT_INFO: u32 = 6;
pub const NBD_OPT_GO: u32 = 7;
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;
/// Answered with [`NBD_REP_ERR_UNSUP`]: this server speaks compact headers only.
pub const NBD_OPT_EXTENDED_HEADERS: u32 = 11;

pub const NBD_REP_ACK: u32 = 1;
pub const NBD_REP_SERVER: u32 = 2;
pub const NBD_REP_INFO: u32 = 3;
pub const NBD_REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks an error reply.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
pub const NBD_REP_ERR_PLATFORM: u32 = NBD_REP_FLAG_ERROR | 4;
pub const NBD_REP_ERR_TLS_REQD: u32 = NBD_REP_FLAG_ERROR | 5;
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
pub const NBD_REP_ERR_SHUTDOWN: u32 = NBD_REP_FLAG_ERROR | 7;
pub const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = NBD_REP_FLAG_ERROR | 8;
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;

pub const NBD_INFO_EXPORT: u16 = 0;
pub const NBD_INFO_NAME: u16 = 1;
pub const NBD_INFO_DESCRIPTION: u16 = 2;
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

// ---- Transmission flags (sent with the export size) ----------------------------------------

pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
pub const NBD_FLAG_ROTATIONAL: u16 = 1 << 4;
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const NBD_FLAG_SEND_DF: u16 = 1 << 7;
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const NBD_FLAG_SEND_CACHE: u16 = 1 << 10;
pub const NBD_FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// ---- Requests -----------------------------------------------------------------------------

pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// Bytes of a request header: magic, flags, type, cookie, offset, length.
pub const REQUEST_HEADER_BYTES: usize = 28;

pub const NBD_CMD_READ: u16 = 0;
pub const NBD_CMD_WRITE: u16 = 1;
pub const NBD_CMD_DISC: u16 = 2;
pub const NBD_CMD_FLUSH: u16 = 3;
pub const NBD_CMD_TRIM: u16 = 4;
pub const NBD_CMD_CACHE: u16 = 5;
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;

pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const NBD_CMD_FLAG_DF: u16 = 1 << 2;
pub const NBD_CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const NBD_CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// ---- Replies ------------------------------------------------------------------------------

pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const NBD_STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Bytes of a simple reply header: magic, error, cookie.
pub const SIMPLE_REPLY_HEADER_BYTES: usize = 16;
/// Bytes of a structured reply chunk header: magic, flags, type, cookie, length.
pub const STRUCTURED_REPLY_HEADER_BYTES: usize = 20;

pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;

pub const NBD_REPLY_TYPE_NONE: u16 = 0;
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const NBD_REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// `base:allocation` flag: the range is not allocated.
pub const NBD_STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: the range reads as zeros.
pub const NBD_STATE_ZERO: u32 = 1 << 1;

/// The one metadata context this server offers.
pub const BASE_ALLOCATION: &str = "base:allocation";

// ---- Error values (the protocol's own numbering, which matches Linux errno) ---------------

pub const NBD_EPERM: u32 = 1;
pub const NBD_EIO: u32 = 5;
pub const NBD_ENOMEM: u32 = 12;
pub const NBD_EINVAL: u32 = 22;
pub const NBD_ENOSPC: u32 = 28;
pub const NBD_EOVERFLOW: u32 = 75;
pub const NBD_ENOTSUP: u32 = 95;
pub const NBD_ESHUTDOWN: u32 = 108;

/// Longest string the protocol allows (export names, error messages), in bytes.
pub const STRING_MAX_BYTES: usize = 4096;
/// Longest error message this server puts in an error chunk, in bytes. Short messages keep
/// error replies cheap; the full story is in the server's log.
pub const ERROR_MESSAGE_MAX_BYTES: usize = 256;

// The codec relies on these; a typo in a constant must not compile.
const _: () = assert!(REQUEST_HEADER_BYTES == 4 + 2 + 2 + 8 + 8 + 4);
const _: () = assert!(STRUCTURED_REPLY_HEADER_BYTES == 4 + 2 + 2 + 8 + 4);
const _: () = assert!(SIMPLE_REPLY_HEADER_BYTES == 4 + 4 + 8);
const _: () = assert!(OPTION_REPLY_HEADER_BYTES == 8 + 4 + 4 + 4);
const _: () = assert!(ERROR_MESSAGE_MAX_BYTES <= STRING_MAX_BYTES);

/// Maps an errno to one the protocol defines. Clients treat unknown values as `EINVAL`, which
/// would hide what really went wrong, so anything unexpected becomes `EIO`; zero (success)
/// is never a valid error.
pub fn wire_errno(errno: u32) -> u32 {
    match errno {
        NBD_EPERM | NBD_EIO | NBD_ENOMEM | NBD_EINVAL | NBD_ENOSPC | NBD_EOVERFLOW
        | NBD_ENOTSUP | NBD_ESHUTDOWN => errno,
        // EDQUOT and EFBIG are "out of space" to a block device client.
        e if e == libc::EDQUOT as u32 || e == libc::EFBIG as u32 => NBD_ENOSPC,
        _ => NBD_EIO,
    }
}

/// Why a frame could not be decoded. Either one ends the connection: the stream cannot be
/// resynchronised after a bad frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame truncated: {got} of {needed} bytes")]
    Short { needed: usize, got: usize },
    #[error("bad magic {found:#x}")]
    BadMagic { found: u64 },
}

/// A transmission request header. `command` stays raw so that unknown commands can be answered
/// with `EINVAL` instead of ending the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: u16,
    /// Opaque client value echoed in the reply (the document calls it "handle").
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl RequestHeader {
    /// Decodes a request header from the first [`REQUEST_HEADER_BYTES`] of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, FrameError> {
        let Some(frame) = buf.first_chunk::<REQUEST_HEADER_BYTES>() else {
            return Err(FrameError::Short {
                needed: REQUEST_HEADER_BYTES,
                got: buf.len(),
            });
        };
        let magic = be_u32(frame, 0);
        if magic != NBD_REQUEST_MAGIC {
            return Err(FrameError::BadMagic {
                found: u64::from(magic),
            });
        }
        Ok(RequestHeader {
            flags: be_u16(frame, 4),
            command: be_u16(frame, 6),
            cookie: be_u64(frame, 8),
            offset: be_u64(frame, 16),
            len: be_u32(frame, 24),
        })
    }

    /// Encodes the header as a client sends it (used by tests, benches and clients).
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(REQUEST_HEADER_BYTES);
        buf.put_u32(NBD_REQUEST_MAGIC);
        buf.put_u16(self.flags);
        buf.put_u16(self.command);
        buf.put_u64(self.cookie);
        buf.put_u64(self.offset);
        buf.put_u32(self.len);
    }
}

/// An option request header from the handshake phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    /// Length of the option data that follows, in bytes.
    pub len: u32,
}

impl OptionHeader {
    /// Decodes an option header from the first [`OPTION_HEADER_BYTES`] of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, FrameError> {
        let Some(frame) = buf.first_chunk::<OPTION_HEADER_BYTES>() else {
            return Err(FrameError::Short {
                needed: OPTION_HEADER_BYTES,
                got: buf.len(),
            });
        };
        let magic = be_u64(frame, 0);
        if magic != NBD_OPTS_MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        Ok(OptionHeader {
            option: be_u32(frame, 8),
            len: be_u32(frame, 12),
        })
    }

    /// Encodes the header as a client sends it.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(NBD_OPTS_MAGIC);
        buf.put_u32(self.option);
        buf.put_u32(self.len);
    }
}

/// The server's greeting: magics and handshake flags.
pub fn put_greeting(buf: &mut BytesMut, handshake_flags: u16) {
    buf.put_u64(NBD_MAGIC);
    buf.put_u64(NBD_OPTS_MAGIC);
    buf.put_u16(handshake_flags);
}

/// One option reply: header and `data`.
pub fn put_option_reply(buf: &mut BytesMut, option: u32, reply_type: u32, data: &[u8]) {
    let len =
        u32::try_from(data.len()).expect("option reply data is built by the server and small");
    buf.reserve(OPTION_REPLY_HEADER_BYTES + data.len());
    buf.put_u64(NBD_REP_MAGIC);
    buf.put_u32(option);
    buf.put_u32(reply_type);
    buf.put_u32(len);
    buf.put_slice(data);
}

/// A simple reply header. The read payload, if any, follows it on the wire.
pub fn put_simple_reply(buf: &mut BytesMut, cookie: u64, error: u32) {
    buf.reserve(SIMPLE_REPLY_HEADER_BYTES);
    buf.put_u32(NBD_SIMPLE_REPLY_MAGIC);
    buf.put_u32(error);
    buf.put_u64(cookie);
}

/// A structured reply chunk header announcing `len` bytes of chunk payload.
pub fn put_chunk_header(buf: &mut BytesMut, flags: u16, chunk_type: u16, cookie: u64, len: u32) {
    buf.reserve(STRUCTURED_REPLY_HEADER_BYTES);
    buf.put_u32(NBD_STRUCTURED_REPLY_MAGIC);
    buf.put_u16(flags);
    buf.put_u16(chunk_type);
    buf.put_u64(cookie);
    buf.put_u32(len);
}

/// Everything of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk except the data, which the caller
/// sends right after (so that read data is never copied into the header buffer).
pub fn put_offset_data_header(
    buf: &mut BytesMut,
    cookie: u64,
    offset: u64,
    data_len: u32,
    done: bool,
) {
    // The chunk length counts the 8-byte offset as well, and a chunk must carry data.
    assert!(
        data_len > 0,
        "an OFFSET_DATA chunk describes at least one byte"
    );
    let len = data_len
        .checked_add(8)
        .expect("read payloads are capped far below 4 GiB");
    let flags = if done { NBD_REPLY_FLAG_DONE } else { 0 };
    put_chunk_header(buf, flags, NBD_REPLY_TYPE_OFFSET_DATA, cookie, len);
    buf.put_u64(offset);
}

/// A final `NBD_REPLY_TYPE_NONE` chunk.
pub fn put_none_chunk(buf: &mut BytesMut, cookie: u64) {
    put_chunk_header(buf, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0);
}

/// A final error chunk; `offset` selects `NBD_REPLY_TYPE_ERROR_OFFSET`. The message is cut to
/// [`ERROR_MESSAGE_MAX_BYTES`] at a character boundary.
pub fn put_error_chunk(
    buf: &mut BytesMut,
    cookie: u64,
    error: u32,
    message: &str,
    offset: Option<u64>,
) {
    assert!(error != 0, "an error chunk carries a nonzero error");
    let message = truncate_utf8(message, ERROR_MESSAGE_MAX_BYTES);
    let (chunk_type, tail) = match offset {
        Some(_) => (NBD_REPLY_TYPE_ERROR_OFFSET, 8),
        None => (NBD_REPLY_TYPE_ERROR, 0),
    };
    let len = 4 + 2 + message.len() + tail;
    put_chunk_header(buf, NBD_REPLY_FLAG_DONE, chunk_type, cookie, len as u32);
    buf.put_u32(error);
    buf.put_u16(message.len() as u16);
    buf.put_slice(message.as_bytes());
    if let Some(offset) = offset {
        buf.put_u64(offset);
    }
}

/// One `base:allocation` descriptor: a run of `len` bytes with status `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDescriptor {
    pub len: u32,
    pub flags: u32,
}

/// A final `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for one metadata context.
pub fn put_block_status_chunk(
    buf: &mut BytesMut,
    cookie: u64,
    context_id: u32,
    descriptors: &[BlockDescriptor],
) {
    assert!(
        !descriptors.is_empty(),
        "a block status chunk carries at least one descriptor"
    );
    let len = u32::try_from(4 + 8 * descriptors.len()).expect("descriptor count is capped");
    put_chunk_header(
        buf,
        NBD_REPLY_FLAG_DONE,
        NBD_REPLY_TYPE_BLOCK_STATUS,
        cookie,
        len,
    );
    buf.put_u32(context_id);
    for d in descriptors {
        assert!(d.len > 0, "block status descriptors are never empty");
        buf.put_u32(d.len);
        buf.put_u32(d.flags);
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(h: &RequestHeader) -> BytesMut {
        let mut buf = BytesMut::new();
        h.encode(&mut buf);
        buf
    }

    #[test]
    fn request_header_layout_matches_the_document() {
        let h = RequestHeader {
            flags: 0x0001,
            command: NBD_CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 4096,
            len: 512,
        };
        let buf = encoded(&h);
        assert_eq!(
            &buf[..],
            &[
                0x25, 0x60, 0x95, 0x13, // magic
                0x00, 0x01, // flags
                0x00, 0x01, // type
                1, 2, 3, 4, 5, 6, 7, 8, // cookie
                0, 0, 0, 0, 0, 0, 0x10, 0, // offset
                0, 0, 2, 0, // length
            ]
        );
        assert_eq!(RequestHeader::parse(&buf), Ok(h));
    }

    #[test]
    fn a_request_with_the_reply_magic_is_refused() {
        let mut buf = encoded(&RequestHeader {
            flags: 0,
            command: 0,
            cookie: 1,
            offset: 0,
            len: 1,
        });
        buf[..4].copy_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(
            RequestHeader::parse(&buf),
            Err(FrameError::BadMagic {
                found: u64::from(NBD_SIMPLE_REPLY_MAGIC)
            })
        );
    }

    #[test]
    fn short_frames_report_what_was_missing() {
        let buf = encoded(&RequestHeader {
            flags: 0,
            command: 0,
            cookie: 1,
            offset: 0,
            len: 1,
        });
        for got in 0..REQUEST_HEADER_BYTES {
            assert_eq!(
                RequestHeader::parse(&buf[..got]),
                Err(FrameError::Short {
                    needed: REQUEST_HEADER_BYTES,
                    got
                })
            );
        }
        let mut opt = BytesMut::new();
        OptionHeader {
            option: NBD_OPT_GO,
            len: 7,
        }
        .encode(&mut opt);
        assert_eq!(
            OptionHeader::parse(&opt[..15]),
            Err(FrameError::Short {
                needed: 16,
                got: 15
            })
        );
        assert_eq!(
            OptionHeader::parse(&opt),
            Ok(OptionHeader {
                option: NBD_OPT_GO,
                len: 7
            })
        );
    }

    #[test]
    fn error_chunks_carry_a_bounded_message_and_the_offset() {
        let mut buf = BytesMut::new();
        let long = "é".repeat(ERROR_MESSAGE_MAX_BYTES); // two bytes per character
        put_error_chunk(&mut buf, 9, NBD_EIO, &long, Some(4096));
        let msg_len = u16::from_be_bytes([buf[24], buf[25]]) as usize;
        assert!(msg_len <= ERROR_MESSAGE_MAX_BYTES);
        assert!(std::str::from_utf8(&buf[26..26 + msg_len]).is_ok());
        let chunk_len = u32::from_be_bytes([buf[16], buf[17], buf[18], buf[19]]) as usize;
        assert_eq!(chunk_len, 6 + msg_len + 8);
        assert_eq!(buf.len(), STRUCTURED_REPLY_HEADER_BYTES + chunk_len);
        assert_eq!(&buf[buf.len() - 8..], &4096u64.to_be_bytes());
        assert_eq!(
            u16::from_be_bytes([buf[6], buf[7]]),
            NBD_REPLY_TYPE_ERROR_OFFSET
        );
    }

    #[test]
    fn offset_data_length_counts_the_offset() {
        let mut buf = BytesMut::new();
        put_offset_data_header(&mut buf, 3, 512, 4096, true);
        assert_eq!(buf.len(), STRUCTURED_REPLY_HEADER_BYTES + 8);
        assert_eq!(
            u32::from_be_bytes([buf[16], buf[17], buf[18], buf[19]]),
            4096 + 8
        );
        assert_eq!(u16::from_be_bytes([buf[4], buf[5]]), NBD_REPLY_FLAG_DONE);
    }

    #[test]
    fn unexpected_errnos_become_eio() {
        assert_eq!(wire_errno(NBD_ENOSPC), NBD_ENOSPC);
        assert_eq!(wire_errno(libc::EDQUOT as u32), NBD_ENOSPC);
        assert_eq!(wire_errno(0), NBD_EIO);
        assert_eq!(wire_errno(libc::EBADF as u32), NBD_EIO);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = RequestHeader::parse(&bytes);
            let _ = OptionHeader::parse(&bytes);
        }

        #[test]
        fn valid_requests_round_trip(flags: u16, command: u16, cookie: u64, offset: u64, len: u32,
                                     trailing in proptest::collection::vec(any::<u8>(), 0..8)) {
            let h = RequestHeader { flags, command, cookie, offset, len };
            let mut buf = encoded(&h);
            buf.extend_from_slice(&trailing); // the parser reads the header only
            prop_assert_eq!(RequestHeader::parse(&buf), Ok(h));
        }

        #[test]
        fn any_other_magic_is_refused(magic: u32, rest in proptest::collection::vec(any::<u8>(), 24)) {
            prop_assume!(magic != NBD_REQUEST_MAGIC);
            let mut buf = magic.to_be_bytes().to_vec();
            buf.extend_from_slice(&rest);
            prop_assert_eq!(RequestHeader::parse(&buf), Err(FrameError::BadMagic { found: u64::from(magic) }));
        }
    }
}
