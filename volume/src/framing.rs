//! Reading the replica wire protocol's frames off a socket: the IO half of framing, shared by
//! the replica server and the volume client ([`crate::wire`] is the codec and does no IO).
//!
//! Small frames are gathered in the connection's read buffer and decoded from there. A frame
//! whose payload is large ([`crate::wire::DIRECT_PAYLOAD_MIN_BYTES`]) has its payload read
//! straight into a buffer of its own: aligned for O_DIRECT, so a replica writes it to disk
//! without another copy, and reused from the buffer cache, so no page is faulted in for it.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::io::portable::aligned::AlignedBuf;

/// What one read step produced.
pub(crate) enum Filled<F> {
    /// A whole frame with a large payload, read into a buffer of its own.
    Frame(F),
    /// Bytes appended to the read buffer; 0 when the peer closed the stream.
    Bytes(usize),
}

/// One read step, taken when no whole frame is buffered. With `large`, a header that
/// `take_large_*_header` took off `buf` and the length of its payload, reads the payload
/// (its first bytes from `buf`, the rest from the socket) and assembles the frame; otherwise
/// reads what the socket has into `buf`. A stream that ends inside a large payload is an
/// `UnexpectedEof` error.
pub(crate) async fn fill<R, H, F>(
    r: &mut R,
    buf: &mut BytesMut,
    large: Option<(H, usize)>,
    assemble: impl FnOnce(H, Bytes) -> F,
) -> io::Result<Filled<F>>
where
    R: AsyncRead + Unpin,
{
    let Some((header, len)) = large else {
        return r.read_buf(buf).await.map(Filled::Bytes);
    };
    let mut payload = AlignedBuf::for_overwrite(len);
    let have = buf.len().min(len);
    payload.as_mut_slice()[..have].copy_from_slice(&buf[..have]);
    buf.advance(have);
    r.read_exact(&mut payload.as_mut_slice()[have..]).await?;
    Ok(Filled::Frame(assemble(header, payload.into_bytes())))
}
