//! One client connection of the replica server: a reader that decodes frames and spawns one
//! task per request, and a writer that puts replies on the socket in completion order.
//!
//! Backpressure: the reader takes a permit from a per-connection semaphore for each request
//! it decodes; the permit is released once the reply has been written. A client that
//! pipelines more than `requests_in_flight_max` requests, or stops reading replies, stops
//! being read.
//!
//! A frame that cannot be decoded ends the reader; requests already read still complete and
//! their replies are written before the socket closes.
//!
//! Capabilities ([`super::grants`]): the reader answers a CAPABILITY itself before it reads
//! the next frame, and refuses a fenced request the connection holds no capability for
//! without spawning it, so what a connection may do follows the order of its frames even
//! though its requests run concurrently.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::capability::now_unix_ms;
use crate::framing::{Filled, fill};
use crate::wire::{
    Op, REQUEST_HEADER_BYTES, Reply, Request, WireError, decode_request, take_large_request_header,
};

use super::execute::execute;
use super::grants::Grants;
use super::{ReplicaServer, stopped};

/// Initial capacity of a connection's read buffer, in bytes.
pub const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Capacity of a connection's write buffer, in bytes; larger payloads bypass it.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;

const _: () = assert!(READ_BUFFER_BYTES >= REQUEST_HEADER_BYTES);

/// Why a connection ended.
#[derive(Debug)]
pub enum Ending {
    ClientClosed,
    Shutdown,
    Io(io::Error),
    Protocol(WireError),
    /// The stream ended in the middle of a frame.
    Truncated,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::ClientClosed => f.write_str("client closed"),
            Ending::Shutdown => f.write_str("shutdown"),
            Ending::Io(e) => write!(f, "socket error: {e}"),
            Ending::Protocol(e) => write!(f, "protocol error: {e}"),
            Ending::Truncated => f.write_str("stream ended mid-frame"),
        }
    }
}

struct Outgoing {
    reply: Reply,
    _permit: OwnedSemaphorePermit,
}

/// Aborts the writer if the connection task itself is aborted.
struct AbortOnDrop(JoinHandle<io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves one connection whose halves are `r` and `w` (a TCP socket's in production, an
/// in-memory pipe's in simulation) until the client closes it, a frame is bad, or shutdown.
/// `peer` is the connection's authenticated principal, if its transport established one.
pub(super) async fn serve<R, W>(
    server: Arc<ReplicaServer>,
    mut r: R,
    w: W,
    peer: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) -> Ending
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let in_flight_max = server.config.requests_in_flight_max;
    let permits = Arc::new(Semaphore::new(in_flight_max));
    let (tx, rx) = mpsc::channel::<Outgoing>(in_flight_max);
    let mut writer = AbortOnDrop(tokio::spawn(write_replies(w, rx)));
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let mut grants = Grants::new(
        server.config.capabilities.clone(),
        peer,
        server.config.scan_readers,
    );

    let ending = loop {
        let req = match decode_request(&mut buf) {
            Ok(Some(req)) => req,
            Ok(None) => {
                let large = match take_large_request_header(&mut buf) {
                    Ok(header) => header.map(|h| (h, h.payload_len() as usize)),
                    Err(e) => break bad_frame(e),
                };
                let filled = tokio::select! {
                    biased;
                    _ = stopped(&mut shutdown) => break Ending::Shutdown,
                    f = fill(&mut r, &mut buf, large, |header, payload| Request { header, payload }) => f,
                };
                match filled {
                    Ok(Filled::Frame(req)) => req,
                    Ok(Filled::Bytes(0)) if buf.is_empty() => break Ending::ClientClosed,
                    Ok(Filled::Bytes(0)) => break Ending::Truncated,
                    Ok(Filled::Bytes(_)) => continue,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ending::Truncated,
                    Err(e) => break Ending::Io(e),
                }
            }
            Err(e) => break bad_frame(e),
        };
        // Answered here, in frame order: a presentation, or a refusal for want of one.
        let inline = if req.header.op == Op::Capability {
            Some(grants.present(&req, now_unix_ms()))
        } else {
            grants.refuse(&req.header)
        };
        let permit = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break Ending::Shutdown,
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
        };
        if let Some(reply) = inline {
            // The writer is gone only when the connection is being torn down.
            let _ = tx
                .send(Outgoing {
                    reply,
                    _permit: permit,
                })
                .await;
            continue;
        }
        let server = Arc::clone(&server);
        let tx = tx.clone();
        tokio::spawn(async move {
            let reply = execute(&server, req).await;
            // The writer is gone only when the connection is being torn down.
            let _ = tx
                .send(Outgoing {
                    reply,
                    _permit: permit,
                })
                .await;
        });
    };

    drop(tx);
    match (&mut writer.0).await {
        Ok(Ok(())) => ending,
        Ok(Err(e)) => match ending {
            Ending::ClientClosed | Ending::Shutdown => Ending::Io(e),
            other => other,
        },
        Err(join) => Ending::Io(io::Error::other(format!("reply writer failed: {join}"))),
    }
}

fn bad_frame(e: WireError) -> Ending {
    tracing::warn!(error = %e, "bad frame from replica client; closing its connection");
    Ending::Protocol(e)
}

/// Writes replies until every sender is gone, flushing whenever no further reply is ready.
/// After a socket error it keeps draining (and dropping) replies so permits are released.
async fn write_replies<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<Outgoing>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER_BYTES, w);
    let mut failed = None;
    while let Some(first) = rx.recv().await {
        if failed.is_some() {
            continue;
        }
        let mut next = Some(first);
        while let Some(out) = next {
            let head = out.reply.encode_header();
            let written = async {
                w.write_all(&head).await?;
                w.write_all(&out.reply.payload).await
            }
            .await;
            if let Err(e) = written {
                failed = Some(e);
                break;
            }
            drop(out);
            next = crate::writer::next_ready(&mut rx).await;
        }
        if failed.is_none()
            && let Err(e) = w.flush().await
        {
            failed = Some(e);
        }
    }
    match failed {
        Some(e) => Err(e),
        None => w.shutdown().await,
    }
}
