//! [`NbdServer`]: exports, configuration, listeners and the life of each connection.
//!
//! Every accepted connection runs on its own task; nothing one client does (bad frames, huge
//! payloads, vanishing mid-request) reaches another. Shutdown stops accepting, asks each
//! connection to stop reading at the next request boundary, lets in-flight requests finish
//! and their replies go out, and aborts whatever is still running after the grace period.
//!
//! A connection whose client starts TLS continues, from the TLS handshake on, over the TLS
//! stream's halves: the rest of the haggling and the whole transmission phase.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::volume::BlockVolume;

use super::exports::{ExportNameError, Exports, FixedExports, FixedExportsError};
use super::handshake::{self, HandshakeError, Outcome, Session};
use super::peer::Peer;
use super::proto::STRING_MAX_BYTES;
use super::request::Geometry;
use super::tls::{self, NbdTls, TlsError, TlsReader, TlsWriter, Upgraded};
use super::transmission::{Ending, Transmission};
use super::wire::shutdown_requested;

/// Preferred block size advertised in `NBD_INFO_BLOCK_SIZE`, in bytes: the checksum
/// granularity of the extent store, below which writes become read-modify-write.
pub const PREFERRED_BLOCK_BYTES: u32 = 4096;
/// Hard cap on the advertised maximum block size (and so on READ/WRITE payloads), in bytes,
/// whatever a volume accepts. It bounds per-request memory and keeps a read reply within one
/// structured chunk; 32 MiB is what the document tells clients to expect at most.
pub const PAYLOAD_MAX_BYTES: u32 = 32 * 1024 * 1024;
/// Default bound on requests in flight per connection.
pub const REQUESTS_IN_FLIGHT_MAX_DEFAULT: usize = 64;
/// Largest accepted `requests_in_flight_max`: each in-flight request may hold a payload of up
/// to [`PAYLOAD_MAX_BYTES`].
pub const REQUESTS_IN_FLIGHT_MAX_LIMIT: usize = 1024;
/// Capacity of the per-connection read buffer, in bytes. Small pipelined headers are parsed
/// from it without a syscall each; large payloads bypass it.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Pause after a failed `accept` (for example out of file descriptors), in milliseconds, so a
/// persistent failure does not spin.
pub const ACCEPT_RETRY_DELAY_MS: u64 = 100;

const _: () = assert!(PREFERRED_BLOCK_BYTES.is_power_of_two() && PREFERRED_BLOCK_BYTES >= 512);
const _: () = assert!(
    PAYLOAD_MAX_BYTES >= 1 << 20 && PAYLOAD_MAX_BYTES.is_multiple_of(PREFERRED_BLOCK_BYTES)
);

/// Server configuration.
#[derive(Debug, Clone)]
pub struct NbdConfig {
    /// Advertise `NBD_FLAG_CAN_MULTI_CONN`. Only correct when every export's flush is a
    /// barrier across connections (true of the extent store).
    pub multi_conn: bool,
    /// Requests read but not yet answered, per connection; the reader stops reading at this.
    pub requests_in_flight_max: usize,
    /// Time a client has to finish the handshake, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Time connections get to finish after shutdown is requested, in milliseconds.
    pub shutdown_grace_ms: u64,
}

impl Default for NbdConfig {
    fn default() -> Self {
        NbdConfig {
            multi_conn: true,
            requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX_DEFAULT,
            handshake_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// Why [`NbdServer::new`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NbdConfigError {
    #[error("an NBD server needs at least one export")]
    NoExports,
    #[error("export name {0:?} is used twice")]
    DuplicateName(String),
    #[error("export name {0:?} is empty, contains NUL or exceeds {STRING_MAX_BYTES} bytes")]
    BadName(String),
    #[error(
        "export {name:?} accepts only {max_io_bytes} bytes per request; at least {PREFERRED_BLOCK_BYTES} are needed"
    )]
    MaxIoTooSmall { name: String, max_io_bytes: u32 },
    #[error("handshake_timeout_ms must be positive")]
    HandshakeTimeout,
    #[error("requests_in_flight_max must be 1..={REQUESTS_IN_FLIGHT_MAX_LIMIT}, not {0}")]
    InFlight(usize),
}

/// An NBD server. Its exports come from an [`Exports`]: a fixed list, or a driver that opens
/// volumes as clients ask for them.
pub struct NbdServer {
    pub(super) exports: Arc<dyn Exports>,
    pub(super) config: NbdConfig,
    pub(super) tls: NbdTls,
    next_connection_id: AtomicU64,
}

/// How a connection's handshake ended, when it did not end in transmission.
#[derive(Debug, thiserror::Error)]
enum Unestablished {
    #[error("{0}")]
    ClientLeft(&'static str),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A connection that reached the transmission phase, in plaintext or over TLS.
enum Established<R, W> {
    Plain(Session, R, W),
    Tls(Session, TlsReader<R, W>, TlsWriter<R, W>),
}

impl NbdServer {
    /// A server for a fixed set of exports; the first is the default one (what an empty
    /// export name selects). Checks the exports and the configuration.
    pub fn new(
        exports: Vec<Arc<dyn BlockVolume>>,
        config: NbdConfig,
    ) -> Result<Self, NbdConfigError> {
        check_config(&config)?;
        let exports = FixedExports::new(exports).map_err(|e| match e {
            FixedExportsError::NoExports => NbdConfigError::NoExports,
            FixedExportsError::DuplicateName(name) => NbdConfigError::DuplicateName(name),
            FixedExportsError::Name(ExportNameError::BadName(name)) => {
                NbdConfigError::BadName(name)
            }
            FixedExportsError::Name(ExportNameError::MaxIoTooSmall { name, max_io_bytes }) => {
                NbdConfigError::MaxIoTooSmall { name, max_io_bytes }
            }
        })?;
        Self::with_exports(Arc::new(exports), config)
    }

    /// A server whose exports `exports` opens on demand. Checks the configuration.
    pub fn with_exports(
        exports: Arc<dyn Exports>,
        config: NbdConfig,
    ) -> Result<Self, NbdConfigError> {
        check_config(&config)?;
        Ok(NbdServer {
            exports,
            config,
            tls: NbdTls::Off,
            next_connection_id: AtomicU64::new(1),
        })
    }

    /// The same server with `tls` as its TLS policy (servers start with [`NbdTls::Off`]).
    /// The configuration is used as given: its certificate, and whether and how it verifies
    /// clients, are the caller's choice; the chain it verified reaches [`Exports`] in
    /// [`Peer::certificates`].
    pub fn with_tls(mut self, tls: NbdTls) -> Self {
        self.tls = tls;
        self
    }

    /// Serves NBD on `listener` until `shutdown` turns true (or its sender is dropped), then
    /// drains connections as described in the module docs and returns.
    pub async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) {
        self.serve(listener, shutdown).await
    }

    /// Like [`serve_tcp`](Self::serve_tcp), on a Unix socket.
    pub async fn serve_unix(
        self: Arc<Self>,
        listener: UnixListener,
        shutdown: watch::Receiver<bool>,
    ) {
        self.serve(listener, shutdown).await
    }

    async fn serve<L: Listener>(self: Arc<Self>, listener: L, shutdown: watch::Receiver<bool>) {
        let mut connections = JoinSet::new();
        let mut stop = shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown_requested(&mut stop) => break,
                Some(done) = connections.join_next(), if !connections.is_empty() => reap(done),
                accepted = listener.accept_split() => match accepted {
                    Ok((r, w, peer)) => {
                        self.spawn_connection(&mut connections, r, w, peer, shutdown.clone());
                    }
                    Err(e) => accept_failed(e).await,
                },
            }
        }
        drop(listener);
        self.drain(connections).await;
    }

    fn spawn_connection<R, W>(
        self: &Arc<Self>,
        connections: &mut JoinSet<()>,
        r: R,
        w: W,
        peer: String,
        shutdown: watch::Receiver<bool>,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("nbd", conn = id);
        connections.spawn(
            Arc::clone(self)
                .connection(r, w, peer, shutdown)
                .instrument(span),
        );
    }

    /// One connection from accept to close.
    async fn connection<R, W>(
        self: Arc<Self>,
        r: R,
        w: W,
        address: String,
        mut shutdown: watch::Receiver<bool>,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        tracing::info!(peer = %address, "nbd connection opened");
        let r = BufReader::with_capacity(READ_BUFFER_BYTES, r);
        let mut peer = Peer::plaintext(address);
        let deadline = Duration::from_millis(self.config.handshake_timeout_ms);
        let established = tokio::select! {
            biased;
            _ = shutdown_requested(&mut shutdown) => {
                tracing::info!(peer = %peer.address, reason = "server shutting down", "nbd connection closed during handshake");
                return;
            }
            established = tokio::time::timeout(deadline, self.establish(r, w, &mut peer)) => established,
        };
        match established {
            Ok(Ok(Established::Plain(session, r, w))) => {
                self.transmit(session, r, w, &peer, shutdown).await
            }
            Ok(Ok(Established::Tls(session, r, w))) => {
                let withdrawn = self.exports.withdrawn(&peer, &session.export.export.name);
                tokio::select! {
                    () = self.transmit(session, r, w, &peer, shutdown) => {}
                    () = withdrawn => {
                        tracing::warn!(peer = %peer.address, "nbd connection cut: the client's access was withdrawn");
                    }
                }
            }
            Ok(Err(Unestablished::ClientLeft(why))) => {
                tracing::info!(peer = %peer.address, reason = why, "nbd connection closed during handshake");
            }
            Ok(Err(Unestablished::Handshake(HandshakeError::Protocol(error)))) => {
                tracing::warn!(peer = %peer.address, tls = peer.tls, %error,
                    "nbd protocol error in handshake; closing connection");
            }
            Ok(Err(Unestablished::Handshake(HandshakeError::Io(error)))) => {
                tracing::info!(peer = %peer.address, tls = peer.tls, %error,
                    "nbd connection closed during handshake");
            }
            Ok(Err(Unestablished::Tls(error))) => {
                tracing::warn!(peer = %peer.address, %error,
                    "nbd TLS handshake failed; closing connection");
            }
            Err(_elapsed) => {
                tracing::warn!(peer = %peer.address, tls = peer.tls,
                    timeout_ms = self.config.handshake_timeout_ms,
                    "nbd handshake timed out; closing connection");
            }
        }
    }

    /// Greeting and option haggling, through a TLS upgrade if the client asks for one, up to
    /// the transmission phase. `peer` gains the client's certificates once TLS is up.
    async fn establish<R, W>(
        &self,
        mut r: R,
        mut w: W,
        peer: &mut Peer,
    ) -> Result<Established<R, W>, Unestablished>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Some(mut state) = handshake::greet(self, &mut r, &mut w).await? else {
            return Err(Unestablished::ClientLeft(
                "closed before sending client flags",
            ));
        };
        let config = match handshake::haggle(self, &mut state, peer, &mut r, &mut w).await? {
            Outcome::Transmission(session) => return Ok(Established::Plain(session, r, w)),
            Outcome::ClientLeft(why) => return Err(Unestablished::ClientLeft(why)),
            Outcome::StartTls(config) => config,
        };
        let Upgraded {
            mut reader,
            mut writer,
            certificates,
        } = tls::upgrade(config, r, w).await?;
        tracing::info!(peer = %peer.address, client_certificates = certificates.len(),
            "nbd TLS established");
        peer.tls = true;
        peer.certificates = certificates;
        state.tls_started();
        match handshake::haggle(self, &mut state, peer, &mut reader, &mut writer).await? {
            Outcome::Transmission(session) => Ok(Established::Tls(session, reader, writer)),
            Outcome::ClientLeft(why) => Err(Unestablished::ClientLeft(why)),
            // Haggling answers a second STARTTLS with an error and carries on.
            Outcome::StartTls(_) => Err(Unestablished::Handshake(HandshakeError::Protocol(
                "a second STARTTLS was accepted".into(),
            ))),
        }
    }

    /// The transmission phase of an established connection, and its close line.
    async fn transmit<R, W>(
        &self,
        session: Session,
        r: R,
        w: W,
        peer: &Peer,
        shutdown: watch::Receiver<bool>,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let peer_address = &peer.address;
        // The export stays open (its lease held) until the transmission ends.
        let opened = session.export;
        let export_name = opened.export.name.clone();
        tracing::debug!(peer = %peer_address, tls = peer.tls, export = %export_name,
            structured = session.negotiated.structured_replies,
            block_status = session.negotiated.base_allocation.is_some(), "nbd transmission started");
        let transmission = Transmission {
            volume: Arc::clone(&opened.volume),
            negotiated: session.negotiated,
            // The size the handshake announced: fixed for the life of the connection.
            geometry: Geometry {
                size_bytes: opened.export.size_bytes,
                payload_max_bytes: opened.export.payload_max_bytes,
            },
            requests_in_flight_max: self.config.requests_in_flight_max,
        };
        let (ending, stats) = transmission.run(r, w, shutdown).await;
        match ending {
            Ending::Protocol(error) => {
                tracing::warn!(peer = %peer_address, export = %export_name, %error, requests = stats.requests,
                    "nbd protocol error; connection closed");
            }
            Ending::Io(error) => {
                tracing::info!(peer = %peer_address, export = %export_name, %error, requests = stats.requests,
                    refused = stats.refused, "nbd connection closed on socket error");
            }
            ending => {
                let reason = match ending {
                    Ending::Disconnect => "client disconnected",
                    Ending::ClientClosed => "client closed the socket",
                    _ => "server shutting down",
                };
                tracing::info!(peer = %peer_address, export = %export_name, reason, requests = stats.requests,
                    refused = stats.refused, "nbd connection closed");
            }
        }
    }

    /// Waits for connections to finish, up to the grace period, then aborts the rest.
    async fn drain(&self, mut connections: JoinSet<()>) {
        if connections.is_empty() {
            return;
        }
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        let finished = tokio::time::timeout(grace, async {
            while let Some(done) = connections.join_next().await {
                reap(done);
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                remaining = connections.len(),
                grace_ms = self.config.shutdown_grace_ms,
                "nbd connections still open after the shutdown grace period; aborting them"
            );
            connections.shutdown().await;
        }
    }
}

fn check_config(config: &NbdConfig) -> Result<(), NbdConfigError> {
    let NbdConfig {
        multi_conn: _,
        requests_in_flight_max,
        handshake_timeout_ms,
        shutdown_grace_ms: _,
    } = *config;
    if !(1..=REQUESTS_IN_FLIGHT_MAX_LIMIT).contains(&requests_in_flight_max) {
        return Err(NbdConfigError::InFlight(requests_in_flight_max));
    }
    if handshake_timeout_ms == 0 {
        return Err(NbdConfigError::HandshakeTimeout);
    }
    Ok(())
}

fn reap(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        // A panic is a bug in this server; the connection is lost, the server is not.
        tracing::error!(error = %e, "nbd connection task panicked");
    }
}

async fn accept_failed(e: io::Error) {
    tracing::warn!(error = %e, "nbd accept failed");
    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_DELAY_MS)).await;
}

/// A listening socket whose connections the server can split into a reader and a writer.
trait Listener: Send {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;

    /// Accepts one connection and names its peer for logs.
    fn accept_split(
        &self,
    ) -> impl std::future::Future<Output = io::Result<(Self::Read, Self::Write, String)>> + Send;
}

impl Listener for TcpListener {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;

    async fn accept_split(&self) -> io::Result<(Self::Read, Self::Write, String)> {
        let (stream, addr) = self.accept().await?;
        // Replies are written whole; Nagle would only add latency.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %addr, error = %e, "TCP_NODELAY not set");
        }
        let (r, w) = stream.into_split();
        Ok((r, w, addr.to_string()))
    }
}

impl Listener for UnixListener {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;

    async fn accept_split(&self) -> io::Result<(Self::Read, Self::Write, String)> {
        let (stream, _addr) = self.accept().await?;
        // Unix peers are anonymous; name them by their credentials if we can.
        let peer = match stream.peer_cred() {
            Ok(c) => format!("unix:pid={}", c.pid().map_or(-1, |p| p)),
            Err(_) => "unix".to_owned(),
        };
        let (r, w) = stream.into_split();
        Ok((r, w, peer))
    }
}
