//! How gateways and rebuild agents dial replica servers: TCP, then mutual TLS 1.3 verifying
//! that the server is the node its address belongs to (its certificate names that address)
//! and is a node at all — a gateway's certificate may name an address too, but no gateway
//! serves replicas.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use volume::client::pool::PoolConfigError;
use volume::client::{
    ConnectFuture, Connector, PoolConfig, ReplicaPool, StreamReader, StreamWriter, TcpConnector,
};

use crate::identity::handshake::HANDSHAKE_TIMEOUT_MS;
use crate::identity::{ClusterTls, PrincipalKind, Transport};

/// Dials replica servers over mutual TLS with this process's identity.
pub struct TlsConnector {
    tls: Arc<ClusterTls>,
}

impl TlsConnector {
    pub fn new(tls: Arc<ClusterTls>) -> TlsConnector {
        TlsConnector { tls }
    }
}

impl Connector for TlsConnector {
    fn connect(&self, addr: SocketAddr) -> ConnectFuture {
        let tls = Arc::clone(&self.tls);
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%addr, error = %e, "TCP_NODELAY not set");
            }
            let refused = |reason: String| {
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("TLS to replica {addr}: {reason}"),
                )
            };
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let (stream, server) = tls
                .client
                .connect(tcp, name, Duration::from_millis(HANDSHAKE_TIMEOUT_MS))
                .await
                .map_err(|e| refused(e.to_string()))?;
            if !matches!(server.kind(), PrincipalKind::Node(_)) {
                return Err(refused(format!("{server} is not a node")));
            }
            let (r, w) = tokio::io::split(stream);
            Ok((Box::new(r) as StreamReader, Box::new(w) as StreamWriter))
        })
    }
}

/// How a process that dials over `transport` opens connections to replica servers.
pub fn connector(transport: &Transport) -> Arc<dyn Connector> {
    match transport.tls() {
        Some(tls) => Arc::new(TlsConnector::new(Arc::clone(tls))),
        None => Arc::new(TcpConnector),
    }
}

/// The replica pool of a process that dials over `transport`.
pub fn replica_pool(
    transport: &Transport,
    config: PoolConfig,
) -> Result<Arc<ReplicaPool>, PoolConfigError> {
    ReplicaPool::new(config, connector(transport))
}
