//! Mutual TLS under gRPC, both ways: the listener side turns accepted TCP connections into
//! authenticated streams that carry their peer's principal into every request, and the dialling
//! side is a connector that tonic's channels open their connections with.
//!
//! TLS is done here with the cluster's own configurations rather than by tonic, so that the
//! certificate presented and the roots trusted can change without a restart (they sit behind
//! swappable slots, see [`crate::identity::tls`]), and so that the caller's identity is the
//! principal the handshake proved, parsed once per connection, not per call.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::identity::handshake::{Accepted, accept_or_join};
use crate::identity::revocation::peer_serial;
use crate::identity::transport::server_name;
use crate::identity::{Principal, PrincipalKind, Transport};

/// Handshakes a listener runs at once; further connections wait in the kernel's backlog.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// Authenticated connections waiting for the gRPC server to take them.
const ACCEPTED_QUEUE_MAX: usize = 64;
/// Joining connections waiting for the join server; joins are rare, one at a time per node.
const JOINERS_QUEUE_MAX: usize = 16;

/// Who is calling, as the connection proved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A principal of this cluster, from its certificate.
    Principal(Principal),
    /// A member or client in the same test or benchmark process, over in-process plaintext.
    InProcess,
    /// A node without a certificate, asking for one with a join token: such connections are
    /// served the join call only, and every other check refuses them.
    Joiner,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Principal(p) => write!(f, "{p}"),
            Caller::InProcess => f.write_str("an in-process caller"),
            Caller::Joiner => f.write_str("a joining node without a certificate"),
        }
    }
}

/// What every request on a connection carries in its extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub caller: Caller,
    pub remote: Option<SocketAddr>,
}

/// A byte stream a connection runs over: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An accepted connection and the peer it proved to be. Once the peer's certificate is
/// revoked, every read and write fails, which closes the connection and its calls.
pub struct PeerStream {
    io: Box<dyn Io>,
    info: PeerInfo,
    cut: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl PeerStream {
    /// Fails with PermissionDenied once the peer's certificate is revoked.
    fn check_cut(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        let Some(cut) = &mut self.cut else {
            return Ok(());
        };
        match cut.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: certificate revoked", self.info.caller),
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The connections a gRPC listener accepted, in two streams served by two servers: those of
/// principals of this cluster, and those of nodes joining with a token (served the join call
/// only).
pub struct Incoming {
    pub members: ReceiverStream<Result<PeerStream, io::Error>>,
    pub joiners: ReceiverStream<Result<PeerStream, io::Error>>,
}

/// Accepts connections on `listener` and hands the gRPC servers those that completed a mutual
/// TLS handshake naming a principal of this cluster (or every one, in process, over
/// plaintext), and those that asked to join. A connection that fails its handshake is logged
/// with the reason and closed; it costs the others nothing but its handshake slot.
pub fn incoming(listener: TcpListener, transport: Transport) -> Incoming {
    let (members_tx, members) = mpsc::channel(ACCEPTED_QUEUE_MAX);
    let (joiners_tx, joiners) = mpsc::channel(JOINERS_QUEUE_MAX);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accept on the gRPC listener");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = members_tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (members_tx, joiners_tx) = (members_tx.clone(), joiners_tx.clone());
            let transport = transport.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match authenticate(tcp, remote, &transport).await {
                    Ok(stream) if stream.info.caller == Caller::Joiner => {
                        // A full queue of joiners refuses the next rather than wait.
                        if joiners_tx.try_send(Ok(stream)).is_err() {
                            tracing::info!(%remote, "join connection refused: too many at once");
                        }
                    }
                    Ok(stream) => {
                        let _ = members_tx.send(Ok(stream)).await;
                    }
                    Err(e) => tracing::info!(%remote, error = %e, "gRPC connection refused"),
                }
            });
        }
    });
    Incoming {
        members: ReceiverStream::new(members),
        joiners: ReceiverStream::new(joiners),
    }
}

async fn authenticate(
    tcp: TcpStream,
    remote: SocketAddr,
    transport: &Transport,
) -> Result<PeerStream, crate::identity::handshake::HandshakeError> {
    match transport {
        Transport::InProcessPlaintext => Ok(PeerStream {
            io: Box::new(tcp),
            info: PeerInfo {
                caller: Caller::InProcess,
                remote: Some(remote),
            },
            cut: None,
        }),
        Transport::Tls(tls) => {
            let accepted =
                accept_or_join(&tls.server, &tls.join, tcp, transport.handshake_timeout()).await?;
            let (stream, principal) = match accepted {
                Accepted::Member(stream, principal) => (stream, principal),
                Accepted::Joiner(stream) => {
                    return Ok(PeerStream {
                        io: Box::new(stream),
                        info: PeerInfo {
                            caller: Caller::Joiner,
                            remote: Some(remote),
                        },
                        cut: None,
                    });
                }
            };
            let serial = peer_serial(stream.get_ref().1);
            let revocations = Arc::clone(tls.server.trust().revocations());
            Ok(PeerStream {
                io: Box::new(stream),
                info: PeerInfo {
                    caller: Caller::Principal(principal),
                    remote: Some(remote),
                },
                cut: Some(Box::pin(async move { revocations.revoked(&serial).await })),
            })
        }
    }
}

/// A boxed byte stream that hyper can drive.
pub type DialedStream = TokioIo<Box<dyn Io>>;

/// The connector tonic channels dial with: TCP, then (over TLS) the handshake, verifying the
/// server's certificate against the address's host.
pub fn connector(
    transport: Transport,
) -> impl tower::Service<
    http::Uri,
    Response = DialedStream,
    Error = io::Error,
    Future = Pin<Box<dyn std::future::Future<Output = io::Result<DialedStream>> + Send>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: http::Uri| {
        let transport = transport.clone();
        Box::pin(async move { dial(uri, transport).await })
            as Pin<Box<dyn std::future::Future<Output = io::Result<DialedStream>> + Send>>
    })
}

async fn dial(uri: http::Uri, transport: Transport) -> io::Result<DialedStream> {
    let authority = uri
        .authority()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no host")))?
        .as_str()
        .to_owned();
    let tcp = TcpStream::connect(&authority).await?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match &transport {
        Transport::InProcessPlaintext => Box::new(tcp),
        Transport::Tls(tls) => {
            let name = server_name(&authority)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            let refused = |reason: String| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("TLS to {authority}: {reason}"),
                )
            };
            let (stream, server) = tls
                .client
                .connect(tcp, name, transport.handshake_timeout())
                .await
                .map_err(|e| refused(e.to_string()))?;
            // Only members serve the metadata API: a gateway's certificate may name this
            // address too, but a gateway is not to be asked about the cluster.
            if !matches!(server.kind(), PrincipalKind::Node(_)) {
                return Err(refused(format!("{server} is not a node")));
            }
            Box::new(stream)
        }
    };
    Ok(TokioIo::new(io))
}
