//! The transmission phase of one connection: a reader that parses and checks requests and
//! spawns one task per request, and a writer task that serialises replies in completion order.
//!
//! ```text
//! socket ──▶ reader ──spawn──▶ request task ──▶ volume
//!              │ (permit)            │
//!              │                     ▼
//!              └──refusals──▶ reply channel ──▶ writer ──▶ socket
//! ```
//!
//! Backpressure: the reader takes a permit from a per-connection semaphore before it reads a
//! request; the permit travels with the request and its reply and is released only once the
//! writer has put the reply on the socket. A client that pipelines more than
//! `requests_in_flight_max` requests, or stops reading replies, therefore stops being read.
//! Reads and writes also hold their payload's size from a per-connection byte budget
//! (`PAYLOAD_BYTES_IN_FLIGHT_MAX`), so many large requests cannot pile up memory either.
//!
//! Ending: whatever ends the reader (`NBD_CMD_DISC`, end of stream, a protocol error,
//! shutdown), requests already read still run to completion and their replies are written
//! before the socket is closed. Request tasks are never cancelled mid-IO.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::volume::BlockVolume;

use super::dispatch::{ReplyFrame, error_frame, execute};
use super::proto::{NBD_CMD_WRITE, REQUEST_HEADER_BYTES, RequestHeader};
use super::request::{Geometry, Negotiated, Op, check_request};
use super::wire::{Frame, read_frame, read_payload, shutdown_requested, skip};

/// Largest payload of a refused WRITE that is read and discarded to keep the stream in step,
/// in bytes. Larger ones end the connection after the error reply. The document asks servers
/// not to treat anything under 32 MiB as an attack, so the cap sits above that.
pub const WRITE_DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Payload bytes (write data read, read data to send) one connection may hold at once. Larger
/// than the largest single payload, so one request always fits.
pub const PAYLOAD_BYTES_IN_FLIGHT_MAX: u64 = 256 * 1024 * 1024;
/// Granularity of the byte budget, in bytes.
const BUDGET_UNIT_BYTES: u64 = 4096;
const _: () = assert!(PAYLOAD_BYTES_IN_FLIGHT_MAX >= super::server::PAYLOAD_MAX_BYTES as u64);

/// Capacity of the socket write buffer, in bytes. Replies are batched into it and flushed
/// when no further reply is ready; larger read payloads bypass it.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Why a connection's transmission phase ended.
#[derive(Debug)]
pub enum Ending {
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// End of stream at a request boundary.
    ClientClosed,
    /// The server is shutting down.
    Shutdown,
    /// A socket error.
    Io(io::Error),
    /// The client broke the protocol (bad magic, truncated frame, unskippable payload).
    Protocol(String),
}

/// Counters for the connection's close line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub requests: u64,
    pub refused: u64,
}

/// A reply on its way to the writer, holding the request's in-flight permit.
struct Outgoing {
    frame: ReplyFrame,
    _permit: OwnedSemaphorePermit,
    /// The payload's share of the byte budget, for reads and writes.
    _budget: Option<OwnedSemaphorePermit>,
}

/// Aborts the task when dropped, so that a connection task aborted at the end of a shutdown
/// grace period does not leave its writer behind.
struct AbortOnDrop(JoinHandle<io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Everything the reader needs about the connection.
pub struct Transmission {
    pub volume: Arc<dyn BlockVolume>,
    pub negotiated: Negotiated,
    pub geometry: Geometry,
    pub requests_in_flight_max: usize,
}

impl Transmission {
    /// Serves requests until the client leaves, breaks the protocol or shutdown is requested,
    /// then waits for in-flight requests and closes the writing side.
    pub async fn run<R, W>(
        self,
        mut r: R,
        w: W,
        mut shutdown: watch::Receiver<bool>,
    ) -> (Ending, Stats)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        assert!(self.requests_in_flight_max > 0);
        let permits = Arc::new(Semaphore::new(self.requests_in_flight_max));
        let budget = Arc::new(Semaphore::new(
            (PAYLOAD_BYTES_IN_FLIGHT_MAX / BUDGET_UNIT_BYTES) as usize,
        ));
        // Every message holds a permit, so the channel never holds more than this.
        let (tx, rx) = mpsc::channel::<Outgoing>(self.requests_in_flight_max);
        let mut writer = AbortOnDrop(tokio::spawn(write_replies(w, rx).in_current_span()));
        let structured = self.negotiated.structured_replies;
        let mut stats = Stats::default();
        let mut header = [0u8; REQUEST_HEADER_BYTES];

        let ending = loop {
            let permit = tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break Ending::Shutdown,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let frame = tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break Ending::Shutdown,
                frame = read_frame(&mut r, &mut header) => frame,
            };
            match frame {
                Ok(Frame::Full) => {}
                Ok(Frame::Eof) => break Ending::ClientClosed,
                Ok(Frame::Truncated { got }) => {
                    break Ending::Protocol(format!("request header truncated after {got} bytes"));
                }
                Err(e) => break Ending::Io(e),
            }
            let h = match RequestHeader::parse(&header) {
                Ok(h) => h,
                Err(e) => break Ending::Protocol(format!("request header: {e}")),
            };
            stats.requests += 1;
            let checked = check_request(&h, &self.negotiated, &self.geometry);
            let units = match &checked {
                Ok(Op::Read { len, .. }) | Ok(Op::Write { len, .. }) => {
                    u64::from(*len).div_ceil(BUDGET_UNIT_BYTES) as u32
                }
                _ => 0,
            };
            let held = if units == 0 {
                None
            } else {
                tokio::select! {
                    biased;
                    _ = shutdown_requested(&mut shutdown) => break Ending::Shutdown,
                    held = budget.clone().acquire_many_owned(units) => {
                        Some(held.expect("the budget semaphore is never closed"))
                    }
                }
            };

            // A WRITE's payload follows its header whether or not the request is accepted;
            // it must be consumed before the next header can be read.
            let mut payload = None;
            if h.command == NBD_CMD_WRITE {
                match checked {
                    Ok(Op::Write { len, .. }) => match read_payload(&mut r, len as usize).await {
                        Ok(Ok(data)) => payload = Some(data),
                        Ok(Err(got)) => {
                            break Ending::Protocol(format!(
                                "write payload truncated after {got} of {len} bytes"
                            ));
                        }
                        Err(e) => break Ending::Io(e),
                    },
                    _ if u64::from(h.len) <= WRITE_DRAIN_MAX_BYTES => {
                        match skip(&mut r, u64::from(h.len)).await {
                            Ok(n) if n == u64::from(h.len) => {}
                            Ok(n) => {
                                break Ending::Protocol(format!(
                                    "refused write payload truncated after {n} bytes"
                                ));
                            }
                            Err(e) => break Ending::Io(e),
                        }
                    }
                    _ => {
                        // Answer first so the client learns why, then stop reading: the
                        // payload is too large to skip.
                        let refusal = checked.expect_err("an accepted write is handled above");
                        let frame =
                            error_frame(h.cookie, refusal.errno, refusal.reason, None, structured);
                        let _ = tx
                            .send(Outgoing {
                                frame,
                                _permit: permit,
                                _budget: None,
                            })
                            .await;
                        break Ending::Protocol(format!(
                            "write of {} bytes is too large to skip",
                            h.len
                        ));
                    }
                }
            }

            match checked {
                Ok(Op::Disconnect) => break Ending::Disconnect,
                Ok(op) => {
                    let volume = Arc::clone(&self.volume);
                    let tx = tx.clone();
                    let task = async move {
                        let frame = execute(volume, h.cookie, op, payload, structured).await;
                        // The writer is gone only if the connection is being torn down.
                        let _ = tx
                            .send(Outgoing {
                                frame,
                                _permit: permit,
                                _budget: held,
                            })
                            .await;
                    };
                    tokio::spawn(task.in_current_span());
                }
                Err(refusal) => {
                    stats.refused += 1;
                    tracing::debug!(
                        cookie = h.cookie,
                        command = h.command,
                        offset = h.offset,
                        len = h.len,
                        errno = refusal.errno,
                        reason = refusal.reason,
                        "request refused"
                    );
                    // With structured replies every error is an error chunk: a read must
                    // never get a simple reply, and the others gain a message.
                    let frame =
                        error_frame(h.cookie, refusal.errno, refusal.reason, None, structured);
                    if tx
                        .send(Outgoing {
                            frame,
                            _permit: permit,
                            _budget: None,
                        })
                        .await
                        .is_err()
                    {
                        break Ending::Io(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "reply writer stopped",
                        ));
                    }
                }
            }
        };

        // The writer finishes once every request task has dropped its sender.
        drop(tx);
        let ending = match (&mut writer.0).await {
            Ok(Ok(())) => ending,
            // A write failure usually means the client went away; the reader's reason is the
            // better story unless the reader saw nothing wrong.
            Ok(Err(e)) => match ending {
                Ending::Disconnect | Ending::ClientClosed | Ending::Shutdown => Ending::Io(e),
                other => other,
            },
            Err(join) => Ending::Io(io::Error::other(format!("reply writer failed: {join}"))),
        };
        (ending, stats)
    }
}

/// Writes replies until every sender is gone, batching whatever is ready into one flush.
/// After a socket error it keeps receiving (and dropping) replies so that request tasks and
/// permits are released, then reports the error.
async fn write_replies<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<Outgoing>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER_BYTES, w);
    let mut failed: Option<io::Error> = None;
    while let Some(first) = rx.recv().await {
        if failed.is_some() {
            continue;
        }
        let mut next = Some(first);
        while let Some(out) = next {
            if let Err(e) = write_frame(&mut w, &out.frame).await {
                failed = Some(e);
                break;
            }
            drop(out); // releases the permit: the reply is on its way
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

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    frame: &ReplyFrame,
) -> io::Result<()> {
    w.write_all(&frame.head).await?;
    if let Some(payload) = &frame.payload {
        w.write_all(payload).await?;
    }
    Ok(())
}
