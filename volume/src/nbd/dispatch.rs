//! Running a checked request against a [`BlockVolume`] and encoding its reply.
//!
//! A reply is a [`ReplyFrame`]: a small encoded header plus, for reads, the data as the volume
//! returned it, so read payloads are never copied on their way to the socket. Which reply
//! shape to use (simple or structured) is decided here, from what was negotiated.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::volume::{BlockVolume, Extent, VolumeError};

use super::proto::*;
use super::request::Op;

/// Most descriptors in one block status reply. The document lets a server describe less than
/// the requested range; a client asks again from where the reply stopped. The cap bounds the
/// reply size (8 bytes each) whatever the volume's fragmentation.
pub const BLOCK_STATUS_DESCRIPTORS_MAX: usize = 1024;

/// One encoded reply, ready for the writer.
#[derive(Debug)]
pub struct ReplyFrame {
    pub head: Bytes,
    /// Read data sent right after `head`.
    pub payload: Option<Bytes>,
}

impl ReplyFrame {
    fn head(buf: BytesMut) -> Self {
        ReplyFrame {
            head: buf.freeze(),
            payload: None,
        }
    }
}

/// The success reply of a command without data.
pub fn ok_frame(cookie: u64) -> ReplyFrame {
    // A simple reply is allowed for any data-less success, even with structured replies.
    let mut buf = BytesMut::with_capacity(SIMPLE_REPLY_HEADER_BYTES);
    put_simple_reply(&mut buf, cookie, 0);
    ReplyFrame::head(buf)
}

/// An error reply. With structured replies it is an error chunk carrying `message` (and
/// `offset` when known); a read must never get a simple reply once structured replies are on.
pub fn error_frame(
    cookie: u64,
    errno: u32,
    message: &str,
    offset: Option<u64>,
    structured: bool,
) -> ReplyFrame {
    let errno = wire_errno(errno);
    let mut buf = BytesMut::with_capacity(64);
    if structured {
        put_error_chunk(&mut buf, cookie, errno, message, offset);
    } else {
        put_simple_reply(&mut buf, cookie, errno);
    }
    ReplyFrame::head(buf)
}

/// Converts a volume's allocation map into `base:allocation` descriptors covering at most
/// `request_len` bytes: empty extents dropped, neighbours with equal status merged, at most
/// one descriptor with `req_one`, at most [`BLOCK_STATUS_DESCRIPTORS_MAX`] otherwise.
pub fn block_descriptors(
    extents: &[Extent],
    request_len: u32,
    req_one: bool,
) -> Vec<BlockDescriptor> {
    let limit = if req_one {
        1
    } else {
        BLOCK_STATUS_DESCRIPTORS_MAX
    };
    let mut out: Vec<BlockDescriptor> = Vec::new();
    let mut left = request_len;
    for e in extents {
        if left == 0 {
            break;
        }
        // Clip to what is left of the request; this also keeps every length within u32.
        let len = u32::try_from(e.len.min(u64::from(left))).expect("clipped to a u32");
        if len == 0 {
            continue;
        }
        let flags = (if e.state.hole { NBD_STATE_HOLE } else { 0 })
            | (if e.state.zero { NBD_STATE_ZERO } else { 0 });
        let count = out.len();
        match out.last_mut() {
            Some(last) if last.flags == flags => last.len += len,
            _ if count == limit => break,
            _ => out.push(BlockDescriptor { len, flags }),
        }
        left -= len;
    }
    debug_assert!(out.iter().map(|d| u64::from(d.len)).sum::<u64>() <= u64::from(request_len));
    out
}

fn volume_error_frame(
    cookie: u64,
    e: &VolumeError,
    request: (u64, u32),
    structured: bool,
) -> ReplyFrame {
    // A checksum error names the failing offset; pass it on when it lies inside the request
    // so the client knows which part of the range is bad.
    let (start, len) = request;
    let offset = match e {
        VolumeError::Checksum { offset, .. }
            if *offset >= start && *offset - start < u64::from(len) =>
        {
            Some(*offset)
        }
        _ => None,
    };
    error_frame(cookie, e.errno(), &e.to_string(), offset, structured)
}

/// Runs `op` and encodes its reply. `payload` is the data of a write.
///
/// Never panics on what the volume returns: a volume that breaks its contract (short read,
/// empty block status) gets an `EIO` reply and an error in the log, because a panic here would
/// leave the client waiting forever for this cookie.
pub async fn execute(
    volume: Arc<dyn BlockVolume>,
    cookie: u64,
    op: Op,
    payload: Option<Bytes>,
    structured: bool,
) -> ReplyFrame {
    match op {
        Op::Read { offset, len } => match volume.read(offset, len).await {
            Ok(data) if data.len() == len as usize => {
                let mut buf = BytesMut::with_capacity(STRUCTURED_REPLY_HEADER_BYTES + 8);
                if structured {
                    // One chunk with DONE: the data is complete in memory, so no error can
                    // surface while it is being sent.
                    put_offset_data_header(&mut buf, cookie, offset, len, true);
                } else {
                    put_simple_reply(&mut buf, cookie, 0);
                }
                ReplyFrame {
                    head: buf.freeze(),
                    payload: Some(data),
                }
            }
            Ok(data) => {
                tracing::error!(
                    offset,
                    len,
                    got = data.len(),
                    "volume returned a short read"
                );
                debug_assert!(
                    false,
                    "volume returned {} bytes for a {len}-byte read",
                    data.len()
                );
                error_frame(cookie, NBD_EIO, "short read from volume", None, structured)
            }
            Err(e) => {
                tracing::warn!(offset, len, error = %e, "read failed");
                volume_error_frame(cookie, &e, (offset, len), structured)
            }
        },
        Op::Write { offset, len, fua } => {
            let data = payload.expect("a write op carries its payload");
            assert_eq!(
                data.len(),
                len as usize,
                "write payload length was read from the header"
            );
            complete(
                cookie,
                volume.write(offset, data, fua).await,
                "write",
                (offset, len),
                structured,
            )
        }
        Op::Flush => complete(cookie, volume.flush().await, "flush", (0, 0), structured),
        Op::Trim { offset, len, fua } => complete(
            cookie,
            volume.trim(offset, u64::from(len), fua).await,
            "trim",
            (offset, len),
            structured,
        ),
        Op::WriteZeroes { offset, len, flags } => {
            let r = volume.write_zeroes(offset, u64::from(len), flags).await;
            // A refused fast zero is an expected answer, not something to warn about.
            if let Err(VolumeError::FastZeroUnsupported) = r {
                return error_frame(
                    cookie,
                    NBD_ENOTSUP,
                    "fast zeroing is not possible here",
                    None,
                    structured,
                );
            }
            complete(cookie, r, "write zeroes", (offset, len), structured)
        }
        Op::BlockStatus {
            offset,
            len,
            req_one,
            context_id,
        } => match volume.block_status(offset, u64::from(len)).await {
            Ok(extents) => {
                let descriptors = block_descriptors(&extents, len, req_one);
                if descriptors.is_empty() {
                    tracing::error!(offset, len, "volume returned no extents for block status");
                    return error_frame(
                        cookie,
                        NBD_EIO,
                        "no allocation information",
                        None,
                        structured,
                    );
                }
                let mut buf = BytesMut::with_capacity(
                    STRUCTURED_REPLY_HEADER_BYTES + 4 + 8 * descriptors.len(),
                );
                put_block_status_chunk(&mut buf, cookie, context_id, &descriptors);
                ReplyFrame::head(buf)
            }
            Err(e) => {
                tracing::warn!(offset, len, error = %e, "block status failed");
                volume_error_frame(cookie, &e, (offset, len), structured)
            }
        },
        Op::Disconnect => unreachable!("disconnect is handled by the connection, not dispatched"),
    }
}

fn complete(
    cookie: u64,
    r: Result<(), VolumeError>,
    what: &'static str,
    range: (u64, u32),
    structured: bool,
) -> ReplyFrame {
    match r {
        Ok(()) => ok_frame(cookie),
        Err(e) => {
            tracing::warn!(op = what, offset = range.0, len = range.1, error = %e, "request failed");
            volume_error_frame(cookie, &e, range, structured)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::ExtentState;

    const DATA: ExtentState = ExtentState {
        hole: false,
        zero: false,
    };
    const HOLE: ExtentState = ExtentState {
        hole: true,
        zero: true,
    };

    fn ext(len: u64, state: ExtentState) -> Extent {
        Extent { len, state }
    }

    #[test]
    fn descriptors_merge_neighbours_and_stop_at_the_request_end() {
        let extents = [
            ext(4096, DATA),
            ext(4096, DATA),
            ext(0, HOLE),
            ext(8192, HOLE),
            ext(1 << 40, DATA),
        ];
        let d = block_descriptors(&extents, 20_000, false);
        assert_eq!(
            d,
            vec![
                BlockDescriptor {
                    len: 8192,
                    flags: 0
                },
                BlockDescriptor {
                    len: 8192,
                    flags: NBD_STATE_HOLE | NBD_STATE_ZERO
                },
                BlockDescriptor {
                    len: 20_000 - 16_384,
                    flags: 0
                },
            ]
        );
    }

    #[test]
    fn req_one_yields_a_single_descriptor() {
        let extents = [ext(4096, DATA), ext(4096, HOLE)];
        assert_eq!(
            block_descriptors(&extents, 65_536, true),
            vec![BlockDescriptor {
                len: 4096,
                flags: 0
            }]
        );
    }

    #[test]
    fn descriptor_count_is_capped() {
        let extents: Vec<_> = (0..5000)
            .map(|i| ext(512, if i % 2 == 0 { DATA } else { HOLE }))
            .collect();
        let d = block_descriptors(&extents, u32::MAX, false);
        assert_eq!(d.len(), BLOCK_STATUS_DESCRIPTORS_MAX);
    }

    #[test]
    fn no_extents_means_no_descriptors() {
        assert!(block_descriptors(&[], 4096, false).is_empty());
        assert!(block_descriptors(&[ext(0, DATA)], 4096, false).is_empty());
    }
}
