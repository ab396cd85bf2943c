//! [`Link`]: the client's connection to one replica server. Requests are pipelined over one
//! TCP session and paired with their replies by request id, whatever order they come back in.
//!
//! A session that fails (connect error, socket error, a bad frame, a timeout) is closed and
//! every request waiting on it fails; the next call opens a new session. Each call is bounded
//! by the link's timeout from start to reply, connecting included, because a frozen replica
//! keeps its socket open and never answers. A replica that timed out is *unresponsive*: later
//! calls fail at once instead of each waiting out the timeout (a frozen node would otherwise
//! stall the first write of every group it serves), until a [`Link::probe`] gets an answer.
//!
//! The timeout starts once the call holds one of the link's in-flight permits: waiting for a
//! permit is queueing in this client, not silence of the replica, and must not read as a
//! replica failure. (Each permit holder is itself bounded by the timeout, so the wait is too.)
//!
//! A new session starts with a PING, whose answer is the replica's power epoch
//! ([`crate::replica::power`]): it changes only when the replica's machine restarted, losing
//! what it had not made durable. Replies come back with the power epoch of their session, so a
//! caller can tell a replica that lost writes from one that merely reconnected or restarted its
//! process.
//!
//! Before a session's first fenced request of a volume, the link presents the volume's
//! attach capability from the pool's [`Capabilities`] (and again whenever it changed), queued
//! ahead of that request on the same session: the replica handles a presentation before it
//! reads the next frame, so the link need not wait for its answer. A volume without a
//! capability presents nothing; a replica that checks then refuses its requests as
//! UNAUTHORIZED, which reads as a failed call.
//!
//! How a session's byte stream is opened is the [`Connector`] seam: TCP in production
//! ([`TcpConnector`]), an in-memory network with faults in simulations.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::capabilities::Capabilities;
use crate::framing::{Filled, fill};
use crate::wire::{
    Reply, Request, RequestHeader, Status, VolumeId, WireError, decode_reply,
    take_large_reply_header,
};

/// Initial capacity of a session's read buffer, in bytes.
pub const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Capacity of a session's write buffer, in bytes.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The read half of a session's byte stream.
pub type StreamReader = Box<dyn AsyncRead + Unpin + Send + 'static>;
/// The write half of a session's byte stream.
pub type StreamWriter = Box<dyn AsyncWrite + Unpin + Send + 'static>;
/// Future of a new session's byte stream.
pub type ConnectFuture =
    std::pin::Pin<Box<dyn Future<Output = io::Result<(StreamReader, StreamWriter)>> + Send>>;

/// Opens byte streams to replica servers: the network seam of the volume client.
pub trait Connector: Send + Sync + 'static {
    /// A new stream to the replica server at `addr`. Bounded by the caller's timeout.
    fn connect(&self, addr: SocketAddr) -> ConnectFuture;
}

/// Real TCP, with Nagle's algorithm off (requests are small and latency-bound).
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect(&self, addr: SocketAddr) -> ConnectFuture {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%addr, error = %e, "TCP_NODELAY not set");
            }
            let (r, w) = stream.into_split();
            Ok((Box::new(r) as StreamReader, Box::new(w) as StreamWriter))
        })
    }
}

/// Why a call to a replica failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connection to {0} closed before the reply")]
    Closed(SocketAddr),
    #[error("no reply from {addr} within {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("{0} did not answer in time earlier and has not answered a probe since")]
    Unresponsive(SocketAddr),
}

/// How one replica answered one request.
#[derive(Clone, Debug)]
pub(super) enum Outcome {
    Acked(Bytes),
    Fenced(u64),
    /// A block failed its checksum on the replica, or the reply's payload on the way.
    Corrupt,
    Failed(String),
}

/// How a call's result reads: the reply's status, or the link's failure.
pub(super) fn outcome(result: Result<Reply, LinkError>) -> Outcome {
    let reply = match result {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if !reply.payload_intact() {
        return Outcome::Corrupt;
    }
    match reply.header.status {
        Status::Ok => Outcome::Acked(reply.payload),
        Status::Fenced => Outcome::Fenced(reply.header.epoch),
        Status::Checksum => Outcome::Corrupt,
        other => Outcome::Failed(match reply.reason() {
            Some(reason) => format!(
                "replica answered {other:?} (errno {}): {reason}",
                reply.header.errno
            ),
            None => format!("replica answered {other:?} (errno {})", reply.header.errno),
        }),
    }
}

/// State shared by a session's reader, writer and callers.
struct Shared {
    // Ordered, so that a closed session fails its calls in the order they were made (and a
    // simulation stays deterministic).
    pending: Mutex<BTreeMap<u64, oneshot::Sender<Reply>>>,
    closed: AtomicBool,
}

impl Shared {
    /// Marks the session dead and fails every waiting call (their senders are dropped).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.pending.lock().expect("pending").clear();
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One TCP session. Dropping it stops its tasks and closes the socket.
struct Session {
    /// The replica's power epoch, as it answered the session's first PING.
    power_epoch: u64,
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    /// Per volume, the serial (see [`Capabilities`]) of the capability this session presented.
    presented: Mutex<HashMap<VolumeId, u64>>,
    /// Held while a capability is queued, so a request that finds it presented finds its
    /// frame ahead of its own.
    presenting: tokio::sync::Mutex<()>,
    _reader: AbortOnDrop,
    _writer: AbortOnDrop,
}

impl Session {
    fn presented(&self, volume: VolumeId) -> Option<u64> {
        self.presented
            .lock()
            .expect("presented")
            .get(&volume)
            .copied()
    }
}

/// The connection to one replica, reopened on demand.
pub struct Link {
    addr: SocketAddr,
    connector: Arc<dyn Connector>,
    timeout: Duration,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    next_id: AtomicU64,
    in_flight_max: usize,
    in_flight: Arc<Semaphore>,
    /// Set when a call timed out; cleared when a probe is answered. Shared with the
    /// server's other links ([`Link::sibling`]): it is the server that did not answer.
    unresponsive: Arc<AtomicBool>,
    capabilities: Arc<Capabilities>,
}

impl Link {
    /// A link that presents no capability (a probe's, or one to replicas that check none).
    pub fn new(
        addr: SocketAddr,
        connector: Arc<dyn Connector>,
        timeout: Duration,
        in_flight_max: usize,
    ) -> Link {
        let none = Arc::new(Capabilities::default());
        Link::with_capabilities(addr, connector, timeout, in_flight_max, none)
    }

    /// A link that presents the capabilities `capabilities` holds.
    pub fn with_capabilities(
        addr: SocketAddr,
        connector: Arc<dyn Connector>,
        timeout: Duration,
        in_flight_max: usize,
        capabilities: Arc<Capabilities>,
    ) -> Link {
        assert!(in_flight_max > 0 && !timeout.is_zero());
        Link {
            addr,
            connector,
            timeout,
            session: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            in_flight_max,
            in_flight: Arc::new(Semaphore::new(in_flight_max)),
            unresponsive: Arc::new(AtomicBool::new(false)),
            capabilities,
        }
    }

    /// A second link to the same server, on its own connection, with the same limits and
    /// capabilities, that finds the server unresponsive whenever this one does.
    pub fn sibling(&self) -> Link {
        Link {
            addr: self.addr,
            connector: Arc::clone(&self.connector),
            timeout: self.timeout,
            session: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            in_flight_max: self.in_flight_max,
            in_flight: Arc::new(Semaphore::new(self.in_flight_max)),
            unresponsive: Arc::clone(&self.unresponsive),
            capabilities: Arc::clone(&self.capabilities),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `req` (its request id is assigned here) and waits for the reply, all within the
    /// link's timeout. A reply whose frame is broken closes the session and fails the call.
    /// Fails at once while the replica is unresponsive.
    pub async fn call(&self, req: Request) -> Result<Reply, LinkError> {
        self.call_in_session(req).await.map(|(reply, _)| reply)
    }

    /// Like [`Link::call`], and also returns the replica's power epoch as the session that
    /// carried the reply learned it: a replica that answers with another epoch than before
    /// lost what it had not made durable.
    pub async fn call_in_session(&self, req: Request) -> Result<(Reply, u64), LinkError> {
        if self.unresponsive.load(Ordering::Acquire) {
            return Err(LinkError::Unresponsive(self.addr));
        }
        self.send(req).await
    }

    /// Like [`Link::call`], but also tries an unresponsive replica; an answer (of any status)
    /// makes it responsive again.
    pub async fn probe(&self, req: Request) -> Result<Reply, LinkError> {
        self.probe_in_session(req).await.map(|(reply, _)| reply)
    }

    /// Like [`Link::probe`], and also returns the replica's power epoch (see
    /// [`Link::call_in_session`]).
    pub async fn probe_in_session(&self, req: Request) -> Result<(Reply, u64), LinkError> {
        let answered = self.send(req).await?;
        if self.unresponsive.swap(false, Ordering::AcqRel) {
            tracing::info!(addr = %self.addr, "replica answers again");
        }
        Ok(answered)
    }

    async fn send(&self, mut req: Request) -> Result<(Reply, u64), LinkError> {
        let timeout_ms = self.timeout.as_millis() as u64;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        req.header.request_id = id;
        let mut used: Option<Arc<Session>> = None;
        // Outside the timeout: see the module docs.
        let _permit = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let attempt = async {
            let session = self.session().await?;
            used = Some(Arc::clone(&session));
            if req.header.op.fenced() {
                self.present(&session, req.header.volume).await?;
            }
            let reply = self.exchange(&session.tx, &session.shared, req).await?;
            Ok((reply, session.power_epoch))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                // A replica that does not answer in time is not trusted with the next request.
                if let Some(s) = used {
                    s.shared.close();
                }
                self.unresponsive.store(true, Ordering::Release);
                Err(LinkError::Timeout {
                    addr: self.addr,
                    timeout_ms,
                })
            }
        }
    }

    /// The open session, or a new one.
    async fn session(&self) -> Result<Arc<Session>, LinkError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.shared.closed.load(Ordering::Acquire)
        {
            return Ok(Arc::clone(s));
        }
        *slot = None;
        let (r, w) = self
            .connector
            .connect(self.addr)
            .await
            .map_err(|e| LinkError::Connect {
                addr: self.addr,
                reason: e.to_string(),
            })?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(BTreeMap::new()),
            closed: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(self.in_flight_max);
        let addr = self.addr;
        let reader = tokio::spawn(read_replies(r, Arc::clone(&shared), addr));
        let writer = tokio::spawn(write_requests(w, rx, Arc::clone(&shared), addr));
        let (reader, writer) = (AbortOnDrop(reader), AbortOnDrop(writer));
        let ping = Request::new(RequestHeader::ping(
            self.next_id.fetch_add(1, Ordering::Relaxed),
        ));
        let answer = self.exchange(&tx, &shared, ping).await?;
        let power_epoch = match (answer.header.status, answer.payload.len()) {
            (Status::Ok, 8) => u64::from_le_bytes(answer.payload[..].try_into().expect("8 bytes")),
            (status, len) => {
                shared.close();
                return Err(LinkError::Connect {
                    addr,
                    reason: format!(
                        "the session's PING was answered {status:?} with {len} bytes, not a power epoch"
                    ),
                });
            }
        };
        let session = Arc::new(Session {
            power_epoch,
            tx,
            shared,
            presented: Mutex::new(HashMap::new()),
            presenting: tokio::sync::Mutex::new(()),
            _reader: reader,
            _writer: writer,
        });
        *slot = Some(Arc::clone(&session));
        tracing::debug!(%addr, power_epoch, "replica session opened");
        Ok(session)
    }

    /// Queues, on `session`, the capability held for `volume`, unless the session already
    /// presented it. Does not wait for the answer: the replica answers a presentation before
    /// it reads the request queued behind it, and a refusal shows in that request's answer
    /// (UNAUTHORIZED); it is logged here too.
    async fn present(&self, session: &Session, volume: VolumeId) -> Result<(), LinkError> {
        let Some(serial) = self.capabilities.serial(volume) else {
            return Ok(());
        };
        if session.presented(volume) == Some(serial) {
            return Ok(());
        }
        let _one = session.presenting.lock().await;
        // Read again: another call may have presented it meanwhile, or a newer one been set.
        let Some(held) = self.capabilities.held(volume) else {
            return Ok(());
        };
        if session.presented(volume) == Some(held.serial) {
            return Ok(());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let epoch = held.attach_epoch;
        let req = Request::capability(id, volume, epoch, held.encoded);
        let answer = self.enqueue(&session.tx, &session.shared, req).await?;
        session
            .presented
            .lock()
            .expect("presented")
            .insert(volume, held.serial);
        let addr = self.addr;
        tokio::spawn(async move {
            // An error is a closed session, which the calls on it report.
            if let Ok(reply) = answer.await
                && reply.header.status != Status::Ok
            {
                tracing::warn!(%addr, %volume, epoch, status = ?reply.header.status, reason = reply.reason().unwrap_or_default(), "replica refused the capability");
            }
        });
        Ok(())
    }

    /// Sends `req` on a session and waits for its reply.
    async fn exchange(
        &self,
        tx: &mpsc::Sender<Request>,
        shared: &Shared,
        req: Request,
    ) -> Result<Reply, LinkError> {
        let reply_rx = self.enqueue(tx, shared, req).await?;
        reply_rx.await.map_err(|_| LinkError::Closed(self.addr))
    }

    /// Queues `req` on a session; its reply comes on the returned channel.
    async fn enqueue(
        &self,
        tx: &mpsc::Sender<Request>,
        shared: &Shared,
        req: Request,
    ) -> Result<oneshot::Receiver<Reply>, LinkError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        shared
            .pending
            .lock()
            .expect("pending")
            .insert(req.header.request_id, reply_tx);
        if shared.closed.load(Ordering::Acquire) || tx.send(req).await.is_err() {
            return Err(LinkError::Closed(self.addr));
        }
        Ok(reply_rx)
    }
}

async fn read_replies(mut r: StreamReader, shared: Arc<Shared>, addr: SocketAddr) {
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let why: String = loop {
        let reply = match decode_reply(&mut buf) {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                let large = match take_large_reply_header(&mut buf) {
                    Ok(header) => header.map(|h| (h, h.payload_len as usize)),
                    Err(e) => break bad_frame(e),
                };
                let assemble = |header, payload| Reply { header, payload };
                match fill(&mut r, &mut buf, large, assemble).await {
                    Ok(Filled::Frame(reply)) => reply,
                    Ok(Filled::Bytes(0)) => break "closed by the replica".to_owned(),
                    Ok(Filled::Bytes(_)) => continue,
                    Err(e) => break format!("read: {e}"),
                }
            }
            Err(e) => break bad_frame(e),
        };
        let waiter = shared
            .pending
            .lock()
            .expect("pending")
            .remove(&reply.header.request_id);
        // No waiter: the call timed out and gave up; the reply is dropped.
        if let Some(w) = waiter {
            let _ = w.send(reply);
        }
    };
    tracing::debug!(%addr, reason = %why, "replica session ended");
    shared.close();
}

fn bad_frame(e: WireError) -> String {
    format!("bad reply frame: {e}")
}

async fn write_requests(
    w: StreamWriter,
    mut rx: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    addr: SocketAddr,
) {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER_BYTES, w);
    let result: io::Result<()> = async {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(req) = next {
                w.write_all(&req.encode_header()).await?;
                w.write_all(&req.payload).await?;
                next = crate::writer::next_ready(&mut rx).await;
            }
            w.flush().await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(%addr, error = %e, "replica session write failed");
        shared.close();
    }
}
