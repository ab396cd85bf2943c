//! One authenticated connection: the TLS handshake over any byte stream, bounded in time, and
//! the principal of the peer it proved to be.
//!
//! A failed handshake says why in terms an operator can act on: the peer spoke plaintext, sent
//! nothing, presented a certificate that was refused (unknown CA, expired, revoked), or a valid
//! certificate naming no principal of this cluster.

use std::io;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, CommonState, InvalidMessage};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor, TlsConnector, client, server};

use super::join::{JOIN_ALPN, JoinServerTls};
use super::principal::{ClusterName, Principal, PrincipalError};
use super::tls::{ClientTls, ServerTls};

/// How long a peer has to complete its handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(
        "no TLS handshake within {0} ms (a plaintext client waiting for the server to speak first looks like this)"
    )]
    Timeout(u64),
    #[error("the peer spoke plaintext, not TLS: every Fabric port takes mutual TLS 1.3 only")]
    Plaintext,
    #[error("peer certificate refused: {0}")]
    Certificate(CertificateError),
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    #[error("TLS handshake: {0}")]
    Io(io::Error),
    #[error("peer identity refused: {0}")]
    Principal(#[from] PrincipalError),
}

impl HandshakeError {
    /// Sorts an error of tokio-rustls's handshake, which carries rustls's error inside an
    /// `io::Error`.
    fn from_io(e: io::Error) -> HandshakeError {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            // The first bytes do not frame as a TLS record: not a TLS client at all.
            Some(rustls::Error::InvalidMessage(
                InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion,
            )) => HandshakeError::Plaintext,
            Some(rustls::Error::InvalidCertificate(c)) => HandshakeError::Certificate(c.clone()),
            Some(other) => HandshakeError::Tls(other.clone()),
            None => HandshakeError::Io(e),
        }
    }
}

/// The principal of the peer of a finished handshake, which must be of `cluster`.
pub fn peer_principal(
    conn: &CommonState,
    cluster: &ClusterName,
) -> Result<Principal, PrincipalError> {
    Principal::from_peer_chain(conn.peer_certificates().unwrap_or_default(), cluster)
}

impl ServerTls {
    /// Accepts a TLS connection on `io`: the handshake, within `timeout`, then the client's
    /// principal. The stream is returned only with a principal of this cluster.
    pub async fn accept<IO>(
        &self,
        io: IO,
        timeout: Duration,
    ) -> Result<(server::TlsStream<IO>, Principal), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let accept = TlsAcceptor::from(self.config()).accept(io);
        let stream = tokio::time::timeout(timeout, accept)
            .await
            .map_err(|_| HandshakeError::Timeout(timeout.as_millis() as u64))?
            .map_err(HandshakeError::from_io)?;
        let principal = peer_principal(stream.get_ref().1, self.cluster())?;
        Ok((stream, principal))
    }
}

impl ClientTls {
    /// Connects over `io` to the server that `server` (its DNS name or IP address) names:
    /// the handshake within `timeout`, then the server's principal.
    ///
    /// In TLS 1.3 the client finishes its half first: a server that refuses this client's
    /// certificate says so in an alert that the first read returns.
    pub async fn connect<IO>(
        &self,
        io: IO,
        server: ServerName<'static>,
        timeout: Duration,
    ) -> Result<(client::TlsStream<IO>, Principal), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let connect = TlsConnector::from(self.config()).connect(server, io);
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| HandshakeError::Timeout(timeout.as_millis() as u64))?
            .map_err(HandshakeError::from_io)?;
        let principal = peer_principal(stream.get_ref().1, self.cluster())?;
        Ok((stream, principal))
    }
}

/// What a listener that also admits joining nodes accepted.
pub enum Accepted<IO> {
    /// A principal of this cluster, proved by its certificate.
    Member(server::TlsStream<IO>, Principal),
    /// A node without a certificate yet, asking for one with a join token: it may make the
    /// join call and nothing else.
    Joiner(server::TlsStream<IO>),
}

/// Accepts a TLS connection on `io` as [`ServerTls::accept`] does, except that a client
/// asking for [`JOIN_ALPN`] gets `join`'s configuration, which asks for no certificate.
pub async fn accept_or_join<IO>(
    server: &ServerTls,
    join: &JoinServerTls,
    io: IO,
    timeout: Duration,
) -> Result<Accepted<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(HandshakeError::from_io)?;
        let joining = start
            .client_hello()
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == JOIN_ALPN));
        let config = if joining {
            join.config()
        } else {
            server.config()
        };
        let stream = start
            .into_stream(config)
            .await
            .map_err(HandshakeError::from_io)?;
        if joining {
            return Ok(Accepted::Joiner(stream));
        }
        let principal = peer_principal(stream.get_ref().1, server.cluster())?;
        Ok(Accepted::Member(stream, principal))
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| HandshakeError::Timeout(timeout.as_millis() as u64))?
}
