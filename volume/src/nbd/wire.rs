//! Socket helpers shared by the handshake and the transmission phase: reading whole frames
//! (telling a clean end of stream from a truncated frame) and skipping payloads.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// Outcome of reading one fixed-size frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The buffer is full.
    Full,
    /// The peer closed the stream exactly at a frame boundary.
    Eof,
    /// The peer closed the stream after `got` bytes of the frame.
    Truncated { got: usize },
}

/// Fills `buf` from `r`, or reports where the stream ended.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<Frame> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(if filled == 0 {
                Frame::Eof
            } else {
                Frame::Truncated { got: filled }
            });
        }
        filled += n;
    }
    Ok(Frame::Full)
}

/// Reads a payload of exactly `len` bytes into a fresh buffer (without zero-filling it
/// first), or reports how many bytes came before the stream ended.
pub async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> io::Result<Result<Bytes, usize>> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let want = (len - buf.len()) as u64;
        if (&mut *r).take(want).read_buf(&mut buf).await? == 0 {
            return Ok(Err(buf.len()));
        }
    }
    assert_eq!(buf.len(), len, "take() bounds every read to the payload");
    Ok(Ok(buf.freeze()))
}

/// Reads and discards `len` bytes; returns how many were there before the stream ended.
pub async fn skip<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> io::Result<u64> {
    tokio::io::copy(&mut (&mut *r).take(len), &mut tokio::io::sink()).await
}

/// Resolves once shutdown is requested. A dropped sender counts as a request: nobody is left
/// who could ask for it later.
pub async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_that_ends_mid_frame_is_truncated_not_eof() {
        let mut buf = [0u8; 8];
        assert_eq!(
            read_frame(&mut &b""[..], &mut buf).await.unwrap(),
            Frame::Eof
        );
        assert_eq!(
            read_frame(&mut &b"abc"[..], &mut buf).await.unwrap(),
            Frame::Truncated { got: 3 }
        );
        assert_eq!(
            read_frame(&mut &b"abcdefghij"[..], &mut buf).await.unwrap(),
            Frame::Full
        );
        assert_eq!(&buf, b"abcdefgh");
    }

    #[tokio::test]
    async fn payloads_are_read_exactly() {
        let mut src = &b"0123456789"[..];
        assert_eq!(
            &read_payload(&mut src, 4).await.unwrap().unwrap()[..],
            b"0123"
        );
        assert_eq!(
            &read_payload(&mut src, 6).await.unwrap().unwrap()[..],
            b"456789"
        );
        assert_eq!(read_payload(&mut &b"ab"[..], 4).await.unwrap(), Err(2));
    }

    #[tokio::test]
    async fn skip_reports_a_short_payload() {
        assert_eq!(skip(&mut &b"abc"[..], 10).await.unwrap(), 3);
        assert_eq!(skip(&mut &b"abcdef"[..], 4).await.unwrap(), 4);
    }
}
