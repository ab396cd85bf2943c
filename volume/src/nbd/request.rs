//! Checking a transmission request against what was negotiated and against the export,
//! without IO: a [`RequestHeader`] goes in, an [`Op`] to run or a [`Refusal`] to send comes out.
//!
//! Every rule that decides the errno of a bad request lives here, in one table-like function,
//! so the connection code never has to reason about protocol edge cases and the rules can be
//! tested exhaustively.

use crate::volume::ZeroFlags;

use super::proto::*;

/// What the handshake settled for this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged.
    pub structured_replies: bool,
    /// Context id of `base:allocation` if it was selected for the export in use.
    pub base_allocation: Option<u32>,
}

/// The export as the request checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub size_bytes: u64,
    /// Largest READ or WRITE payload accepted (the advertised maximum block size).
    pub payload_max_bytes: u32,
}

/// A checked request, ready to run against the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
        context_id: u32,
    },
    Disconnect,
}

/// A request answered with an error without touching the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub errno: u32,
    /// For the log and the structured error message.
    pub reason: &'static str,
}

fn refuse(errno: u32, reason: &'static str) -> Refusal {
    Refusal { errno, reason }
}

/// Command flags each command may carry. FUA is accepted everywhere: the document says a
/// server that advertises `NBD_FLAG_SEND_FUA` must accept it on any command.
fn allowed_flags(command: u16, n: &Negotiated) -> u16 {
    let df = if n.structured_replies {
        NBD_CMD_FLAG_DF
    } else {
        0
    };
    NBD_CMD_FLAG_FUA
        | match command {
            NBD_CMD_READ => df,
            NBD_CMD_WRITE_ZEROES => NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
            NBD_CMD_BLOCK_STATUS => NBD_CMD_FLAG_REQ_ONE,
            _ => 0,
        }
}

/// Checks one request. `NBD_CMD_DISC` is never refused: it has no reply to carry an error.
pub fn check_request(h: &RequestHeader, n: &Negotiated, g: &Geometry) -> Result<Op, Refusal> {
    let known = matches!(
        h.command,
        NBD_CMD_READ
            | NBD_CMD_WRITE
            | NBD_CMD_DISC
            | NBD_CMD_FLUSH
            | NBD_CMD_TRIM
            | NBD_CMD_WRITE_ZEROES
            | NBD_CMD_BLOCK_STATUS
    );
    if !known {
        return Err(refuse(NBD_EINVAL, "unknown command"));
    }
    if h.command == NBD_CMD_DISC {
        return Ok(Op::Disconnect);
    }
    if h.flags & !allowed_flags(h.command, n) != 0 {
        return Err(refuse(
            NBD_EINVAL,
            "command flag not valid for this command",
        ));
    }
    let fua = h.flags & NBD_CMD_FLAG_FUA != 0;
    if h.command == NBD_CMD_FLUSH {
        if h.offset != 0 || h.len != 0 {
            return Err(refuse(NBD_EINVAL, "flush with nonzero offset or length"));
        }
        return Ok(Op::Flush);
    }
    // Every remaining command addresses a range. The document leaves zero-length requests
    // unspecified; refusing them is explicit and keeps "empty" out of the volume layer.
    if h.len == 0 {
        return Err(refuse(NBD_EINVAL, "zero-length request"));
    }
    let carries_payload = matches!(h.command, NBD_CMD_READ | NBD_CMD_WRITE);
    if carries_payload && h.len > g.payload_max_bytes {
        return Err(refuse(NBD_EINVAL, "length exceeds the maximum block size"));
    }
    let past_end = h
        .offset
        .checked_add(u64::from(h.len))
        .is_none_or(|end| end > g.size_bytes);
    if past_end {
        // Writes past the end are "no space" to a block device; everything else is invalid.
        let errno = match h.command {
            NBD_CMD_WRITE | NBD_CMD_WRITE_ZEROES => NBD_ENOSPC,
            _ => NBD_EINVAL,
        };
        return Err(refuse(errno, "range extends past the end of the export"));
    }
    let (offset, len) = (h.offset, h.len);
    Ok(match h.command {
        NBD_CMD_READ => Op::Read { offset, len },
        NBD_CMD_WRITE => Op::Write { offset, len, fua },
        NBD_CMD_TRIM => Op::Trim { offset, len, fua },
        NBD_CMD_WRITE_ZEROES => Op::WriteZeroes {
            offset,
            len,
            flags: ZeroFlags {
                may_trim: h.flags & NBD_CMD_FLAG_NO_HOLE == 0,
                fua,
                fast: h.flags & NBD_CMD_FLAG_FAST_ZERO != 0,
            },
        },
        NBD_CMD_BLOCK_STATUS => match n.base_allocation {
            Some(context_id) => Op::BlockStatus {
                offset,
                len,
                req_one: h.flags & NBD_CMD_FLAG_REQ_ONE != 0,
                context_id,
            },
            None => {
                return Err(refuse(
                    NBD_EINVAL,
                    "block status without a negotiated metadata context",
                ));
            }
        },
        _ => unreachable!("every known command is handled above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIZE: u64 = 1 << 20;
    const GEO: Geometry = Geometry {
        size_bytes: SIZE,
        payload_max_bytes: 64 * 1024,
    };
    const PLAIN: Negotiated = Negotiated {
        structured_replies: false,
        base_allocation: None,
    };
    const RICH: Negotiated = Negotiated {
        structured_replies: true,
        base_allocation: Some(1),
    };

    fn req(command: u16, flags: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 7,
            offset,
            len,
        }
    }

    fn errno(r: Result<Op, Refusal>) -> u32 {
        r.expect_err("request should be refused").errno
    }

    #[test]
    fn in_range_requests_become_ops() {
        assert_eq!(
            check_request(&req(NBD_CMD_READ, 0, 0, 4096), &PLAIN, &GEO),
            Ok(Op::Read {
                offset: 0,
                len: 4096
            })
        );
        assert_eq!(
            check_request(
                &req(NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, SIZE - 512, 512),
                &PLAIN,
                &GEO
            ),
            Ok(Op::Write {
                offset: SIZE - 512,
                len: 512,
                fua: true
            })
        );
        assert_eq!(
            check_request(&req(NBD_CMD_FLUSH, 0, 0, 0), &PLAIN, &GEO),
            Ok(Op::Flush)
        );
        assert_eq!(
            check_request(&req(NBD_CMD_DISC, 0xffff, 5, 5), &PLAIN, &GEO),
            Ok(Op::Disconnect)
        );
    }

    #[test]
    fn write_zeroes_flags_map_to_zero_flags() {
        let flags = NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
        assert_eq!(
            check_request(&req(NBD_CMD_WRITE_ZEROES, flags, 0, 1 << 20), &PLAIN, &GEO),
            Ok(Op::WriteZeroes {
                offset: 0,
                len: 1 << 20,
                flags: ZeroFlags {
                    may_trim: false,
                    fua: false,
                    fast: true
                }
            })
        );
    }

    #[test]
    fn out_of_range_is_einval_for_reads_and_enospc_for_writes() {
        assert_eq!(
            errno(check_request(&req(NBD_CMD_READ, 0, SIZE, 1), &PLAIN, &GEO)),
            NBD_EINVAL
        );
        assert_eq!(
            errno(check_request(
                &req(NBD_CMD_TRIM, 0, SIZE - 1, 2),
                &PLAIN,
                &GEO
            )),
            NBD_EINVAL
        );
        assert_eq!(
            errno(check_request(
                &req(NBD_CMD_BLOCK_STATUS, 0, SIZE, 1),
                &RICH,
                &GEO
            )),
            NBD_EINVAL
        );
        assert_eq!(
            errno(check_request(
                &req(NBD_CMD_WRITE, 0, SIZE - 1, 2),
                &PLAIN,
                &GEO
            )),
            NBD_ENOSPC
        );
        assert_eq!(
            errno(check_request(
                &req(NBD_CMD_WRITE_ZEROES, 0, SIZE, 1),
                &PLAIN,
                &GEO
            )),
            NBD_ENOSPC
        );
        // offset + len overflowing u64 must not wrap into range.
        assert_eq!(
            errno(check_request(
                &req(NBD_CMD_READ, 0, u64::MAX, 2),
                &PLAIN,
                &GEO
            )),
            NBD_EINVAL
        );
    }

    #[test]
    fn malformed_requests_are_einval() {
        assert_eq!(
            errno(check_request(&req(NBD_CMD_READ, 0, 0, 0), &PLAIN, &GEO)),
            NBD_EINVAL
        );
        assert_eq!(
            errno(check_request(
                &req(NBD_CMD_READ, 0, 0, 64 * 1024 + 1),
                &PLAIN,
                &GEO
            )),
            NBD_EINVAL
        );
        assert_eq!(
            errno(check_request(&req(NBD_CMD_FLUSH, 0, 1, 0), &PLAIN, &GEO)),
            NBD_EINVAL
        );
        assert_eq!(
            errno(check_request(&req(NBD_CMD_CACHE, 0, 0, 1), &PLAIN, &GEO)),
            NBD_EINVAL
        );
        assert_eq!(
            errno(check_request(&req(99, 0, 0, 1), &PLAIN, &GEO)),
            NBD_EINVAL
        );
        // DF needs structured replies; REQ_ONE belongs to block status only.
        assert_eq!(
            errno(check_request(
                &req(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 1),
                &PLAIN,
                &GEO
            )),
            NBD_EINVAL
        );
        assert!(check_request(&req(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 1), &RICH, &GEO).is_ok());
        assert_eq!(
            errno(check_request(
                &req(NBD_CMD_WRITE, NBD_CMD_FLAG_REQ_ONE, 0, 1),
                &RICH,
                &GEO
            )),
            NBD_EINVAL
        );
        assert_eq!(
            errno(check_request(
                &req(NBD_CMD_BLOCK_STATUS, 0, 0, 1),
                &PLAIN,
                &GEO
            )),
            NBD_EINVAL
        );
    }

    #[test]
    fn large_trims_and_zeroes_are_not_payload_bound() {
        assert!(check_request(&req(NBD_CMD_TRIM, 0, 0, SIZE as u32), &PLAIN, &GEO).is_ok());
        assert!(check_request(&req(NBD_CMD_WRITE_ZEROES, 0, 0, SIZE as u32), &PLAIN, &GEO).is_ok());
    }

    proptest! {
        #[test]
        fn accepted_ranges_lie_inside_the_export(flags: u16, command in 0u16..10, offset: u64, len: u32, rich: bool) {
            let n = if rich { RICH } else { PLAIN };
            match check_request(&req(command, flags, offset, len), &n, &GEO) {
                Ok(Op::Read { offset, len }) | Ok(Op::Write { offset, len, .. }) => {
                    prop_assert!(len > 0 && len <= GEO.payload_max_bytes);
                    prop_assert!(offset + u64::from(len) <= SIZE);
                }
                Ok(Op::Trim { offset, len, .. }) | Ok(Op::WriteZeroes { offset, len, .. })
                | Ok(Op::BlockStatus { offset, len, .. }) => {
                    prop_assert!(len > 0 && offset + u64::from(len) <= SIZE);
                }
                Ok(Op::Flush) | Ok(Op::Disconnect) => {}
                Err(r) => prop_assert!(r.errno == NBD_EINVAL || r.errno == NBD_ENOSPC),
            }
        }
    }
}
