//! How a process's connections are secured: mutual TLS with the identity in its certificate
//! directory, or, for processes that never leave one test or benchmark binary, plaintext.
//!
//! [`Transport`] is what servers accept with and clients dial with. A daemon always runs with
//! [`Transport::Tls`]: `fabricd` has no switch that turns TLS off on a TCP port. The
//! [`Transport::InProcessPlaintext`] case exists for in-process simulations and benchmarks
//! whose members and clients share one address space and one loopback; its callers are
//! treated as fully trusted, which is why nothing that parses a command line can choose it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::handshake::HANDSHAKE_TIMEOUT_MS;
use super::join::JoinServerTls;
use super::load::Identity;
use super::principal::Principal;
use super::tls::{ClientTls, ServerTls};
use super::{ClusterName, IdentityError};

/// Both sides of one identity's mutual TLS, and where it was loaded from (for rotation).
pub struct ClusterTls {
    pub server: ServerTls,
    pub client: ClientTls,
    /// What a member presents to a node joining with a token (see [`super::join`]).
    pub join: JoinServerTls,
    principal: Principal,
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("principal", &self.principal.to_string())
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// The identity in certificate directory `dir` (`chain.pem`, `key.pem`, `ca.pem`).
    pub fn load(dir: &Path) -> Result<ClusterTls, IdentityError> {
        let identity = Identity::load(dir)?;
        let mut tls = ClusterTls::from_identity(&identity)?;
        tls.dir = Some(dir.to_path_buf());
        Ok(tls)
    }

    pub fn from_identity(identity: &Identity) -> Result<ClusterTls, IdentityError> {
        let server = ServerTls::new(identity).map_err(|e| IdentityError::Tls(e.to_string()))?;
        let client = ClientTls::new(identity).map_err(|e| IdentityError::Tls(e.to_string()))?;
        let join = JoinServerTls::new(server.cert().clone(), identity.roots().to_vec())
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        Ok(ClusterTls {
            server,
            client,
            join,
            principal: identity.principal().clone(),
            dir: None,
        })
    }

    /// The principal this process proves to be.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn cluster(&self) -> &ClusterName {
        self.principal.cluster()
    }

    /// Where the identity was loaded from, if from a directory.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Reads the certificate directory again and presents what it holds from the next
    /// handshake on, as a server and as a client; the roots clients are verified against
    /// follow `ca.pem`. A renewed certificate must name the same principal. On error nothing
    /// changes and connections go on with the certificate they had.
    pub fn reload(&self) -> Result<(), IdentityError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let identity = Identity::load(dir)?;
        if identity.principal() != &self.principal {
            return Err(IdentityError::Request(format!(
                "{} names {}, not {}: a renewed certificate keeps its principal",
                dir.display(),
                identity.principal(),
                self.principal
            )));
        }
        let tls_err = |e: super::tls::TlsError| IdentityError::Tls(e.to_string());
        let roots = identity
            .root_store()
            .map_err(|e| IdentityError::Tls(format!("roots: {e}")))?;
        self.server
            .reload(identity.chain().to_vec(), identity.key())
            .map_err(tls_err)?;
        self.server.trust().update_roots(roots).map_err(tls_err)?;
        self.join.update_roots(identity.roots().to_vec());
        self.client
            .reload(identity.chain().to_vec(), identity.key())
            .map_err(tls_err)?;
        Ok(())
    }
}

/// How a process's TCP connections are secured.
#[derive(Clone, Debug)]
pub enum Transport {
    /// Mutual TLS 1.3 with this identity on every connection, both ways.
    Tls(Arc<ClusterTls>),
    /// No TLS, every caller fully trusted: for members and clients inside one test or
    /// benchmark process only.
    InProcessPlaintext,
}

impl Transport {
    pub fn load(dir: &Path) -> Result<Transport, IdentityError> {
        Ok(Transport::Tls(Arc::new(ClusterTls::load(dir)?)))
    }

    pub fn tls(&self) -> Option<&Arc<ClusterTls>> {
        match self {
            Transport::Tls(tls) => Some(tls),
            Transport::InProcessPlaintext => None,
        }
    }

    /// The URI scheme of a gRPC endpoint dialled over this transport.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Tls(_) => "https",
            Transport::InProcessPlaintext => "http",
        }
    }

    /// How long a peer has to finish its handshake.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(HANDSHAKE_TIMEOUT_MS)
    }
}

/// The name a client verifies a server's certificate against, from the host part of
/// `host:port`: an IP address or a DNS name.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, IdentityError> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned())
        .map_err(|_| IdentityError::Request(format!("{addr:?} names no host to verify")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_part() {
        assert!(matches!(
            server_name("127.0.0.1:7000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("meta-1.cell:7000").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name(":7000").is_err());
    }
}
