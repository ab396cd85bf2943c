//! [`Peer`]: who is at the other end of a connection, as the export seam sees it. The server
//! fills it in (the address at accept, the client's certificate chain once TLS is up) and
//! passes it to every [`Exports`](super::Exports) call, so whoever owns the volumes can decide
//! per client which exports it may list, describe and open. This module only carries the
//! identity; it decides nothing.

use rustls::pki_types::CertificateDer;

/// The client of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Where the connection comes from, for logs and messages: `ip:port`, or `unix:pid=N`.
    pub address: String,
    /// Whether option haggling has moved to TLS (`NBD_OPT_STARTTLS` succeeded).
    pub tls: bool,
    /// The client's certificate chain, leaf first, as the TLS handshake received and the
    /// server's `ServerConfig` verified it. Empty in plaintext, and over TLS when the
    /// configuration lets a client in without a certificate.
    pub certificates: Vec<CertificateDer<'static>>,
}

impl Peer {
    /// A client that has not (yet) started TLS.
    pub fn plaintext(address: impl Into<String>) -> Peer {
        Peer {
            address: address.into(),
            tls: false,
            certificates: Vec::new(),
        }
    }

    /// The certificate that names the client, if it presented one over TLS.
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.certificates.first()
    }
}
