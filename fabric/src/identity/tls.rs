//! rustls configurations for mutual TLS 1.3 between the processes of one cluster.
//!
//! Both sides present their own chain and verify the other's against the cluster's roots; there
//! is no anonymous side and no older protocol version. What a running process may change
//! without a restart sits behind [`ArcSwap`]s that the configurations hold:
//!
//! - [`CertSlot`]: the certificate this process presents, as a server ([`ResolvesServerCert`])
//!   and as a client ([`ResolvesClientCert`]). [`CertSlot::reload`] swaps it; handshakes that
//!   start afterwards present the new one, connections already open keep theirs.
//! - [`ClientTrust`]: how a server verifies client certificates: the roots and the certificate
//!   revocation lists, swapped together by [`ClientTrust::update`].
//!
//! One crypto provider, aws-lc-rs, is used everywhere: [`provider`] is what every configuration
//! is built with, so no configuration depends on rustls's process-wide default, and its key
//! exchange prefers the post-quantum hybrid X25519MLKEM768 (recorded traffic is not exposed if
//! X25519 falls to a quantum computer later). [`install_default_provider`] still installs it
//! as that default, for libraries (tonic) that build configurations of their own. The
//! workspace names only this provider in the features of rustls, tokio-rustls and rcgen, so
//! ring's rustls provider is never compiled in beside it, and CI checks that it stays so.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::load::Identity;
use super::principal::ClusterName;
use super::revocation::{Revocations, serial_of};

/// The protocol versions Fabric speaks: TLS 1.3 only.
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The crypto provider every Fabric TLS configuration and certificate uses (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs [`provider`] as rustls's process-wide default, once, early in `main`. If a default
/// is already installed it is left alone: Fabric's own configurations never rely on it.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate and key: {0}")]
    CertifiedKey(rustls::Error),
    #[error("trusted roots: {0}")]
    Roots(String),
    #[error("client verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("server verifier: {0}")]
    ServerVerifier(rustls::server::VerifierBuilderError),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The certificate this process presents, swappable while it serves.
pub struct CertSlot {
    current: ArcSwap<CertifiedKey>,
}

impl CertSlot {
    /// A slot holding `chain` (leaf first) and its `key`; refuses a key of another certificate.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<CertSlot, TlsError> {
        Ok(CertSlot {
            current: ArcSwap::from_pointee(certified_key(chain, key)?),
        })
    }

    /// Presents `chain` and `key` from the next handshake on. On error the slot keeps what it had.
    pub fn reload(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        self.current.store(Arc::new(certified_key(chain, key)?));
        Ok(())
    }

    /// The leaf presented now.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.load().cert[0].clone()
    }

    /// The chain and key presented now.
    pub fn certified(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    if chain.is_empty() {
        return Err(TlsError::CertifiedKey(
            rustls::Error::NoCertificatesPresented,
        ));
    }
    CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::CertifiedKey)
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSlot").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// How a server verifies client certificates: webpki against the cluster's roots, with the
/// revocation lists in force; both swappable while the server runs.
///
/// Revocation is checked for the leaf only, and a leaf whose issuer has no list here is
/// accepted: the lists will come from the Raft state, which names only revoked leaves.
pub struct ClientTrust {
    verifier: ArcSwap<Arc<dyn ClientCertVerifier>>,
    /// What the verifier was built from, so that either half can change alone.
    inputs: std::sync::Mutex<TrustInputs>,
    /// The serials the cluster revoked, checked after the chain (see `revocation`).
    revocations: Arc<Revocations>,
}

struct TrustInputs {
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl ClientTrust {
    pub fn new(
        roots: Arc<RootCertStore>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<ClientTrust, TlsError> {
        Ok(ClientTrust {
            verifier: ArcSwap::from_pointee(client_verifier(roots.clone(), crls.clone())?),
            inputs: std::sync::Mutex::new(TrustInputs { roots, crls }),
            revocations: Arc::default(),
        })
    }

    /// Verifies new handshakes against `roots` and `crls` from now on. On error nothing changes.
    pub fn update(
        &self,
        roots: Arc<RootCertStore>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(), TlsError> {
        let mut inputs = self.inputs.lock().expect("trust inputs");
        self.verifier
            .store(Arc::new(client_verifier(roots.clone(), crls.clone())?));
        *inputs = TrustInputs { roots, crls };
        Ok(())
    }

    /// New roots, the revocation lists unchanged.
    pub fn update_roots(&self, roots: Arc<RootCertStore>) -> Result<(), TlsError> {
        let crls = self.inputs.lock().expect("trust inputs").crls.clone();
        self.update(roots, crls)
    }

    /// New revocation lists, the roots unchanged.
    pub fn update_crls(
        &self,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(), TlsError> {
        let roots = self.inputs.lock().expect("trust inputs").roots.clone();
        self.update(roots, crls)
    }

    fn current(&self) -> Arc<Arc<dyn ClientCertVerifier>> {
        self.verifier.load_full()
    }

    /// The revoked serials this server refuses; its owner keeps them current.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }
}

fn client_verifier(
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    Ok(
        WebPkiClientVerifier::builder_with_provider(roots, provider())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()?,
    )
}

impl fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTrust").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientTrust {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: every client has exactly one certificate to offer, and the roots may change
    /// under a borrowed list.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .current()
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.revocations.is_empty() {
            return Ok(verified);
        }
        match serial_of(end_entity) {
            Some(serial) if self.revocations.is_revoked(&serial) => Err(
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked),
            ),
            Some(_) => Ok(verified),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The server side of a cluster's mutual TLS: a configuration to accept with, and the handles
/// that change what it presents and whom it trusts without a restart.
pub struct ServerTls {
    config: Arc<ServerConfig>,
    cert: Arc<CertSlot>,
    trust: Arc<ClientTrust>,
    cluster: ClusterName,
}

impl ServerTls {
    /// Presents `identity`'s chain and admits clients whose chains lead to its roots and name
    /// a principal of its cluster; no revocation list yet.
    pub fn new(identity: &Identity) -> Result<ServerTls, TlsError> {
        ServerTls::from_parts(
            identity.chain().to_vec(),
            identity.key(),
            identity.root_store().map_err(TlsError::Roots)?,
            identity.principal().cluster().clone(),
        )
    }

    /// Like [`ServerTls::new`], from a chain (leaf first), its key, the roots and the cluster.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Arc<RootCertStore>,
        cluster: ClusterName,
    ) -> Result<ServerTls, TlsError> {
        let cert = Arc::new(CertSlot::new(chain, key)?);
        let trust = Arc::new(ClientTrust::new(roots, Vec::new())?);
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(trust.clone())
            .with_cert_resolver(cert.clone());
        // No session resumption: every connection is a full handshake, so a reloaded
        // certificate, a new revocation list or a new root applies to every new connection.
        // Connections are long-lived; a full handshake costs well under a millisecond.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(ServerTls {
            config: Arc::new(config),
            cert,
            trust,
            cluster,
        })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The cluster whose principals this server admits.
    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    /// Presents a new certificate from the next handshake on.
    pub fn reload(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        self.cert.reload(chain, key)
    }

    /// The slot of the presented certificate.
    pub fn cert(&self) -> &Arc<CertSlot> {
        &self.cert
    }

    /// The roots and revocation lists clients are verified against.
    pub fn trust(&self) -> &ClientTrust {
        &self.trust
    }
}

/// The client side: a configuration to connect with, and the slot of the certificate it
/// presents. The server is verified against the roots, with its DNS or IP name.
pub struct ClientTls {
    config: Arc<ClientConfig>,
    cert: Arc<CertSlot>,
    cluster: ClusterName,
}

impl ClientTls {
    /// Presents `identity`'s chain and accepts servers whose chains lead to its roots.
    pub fn new(identity: &Identity) -> Result<ClientTls, TlsError> {
        ClientTls::from_parts(
            identity.chain().to_vec(),
            identity.key(),
            identity.root_store().map_err(TlsError::Roots)?,
            identity.principal().cluster().clone(),
        )
    }

    /// Like [`ClientTls::new`], from a chain (leaf first), its key, the roots and the cluster.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Arc<RootCertStore>,
        cluster: ClusterName,
    ) -> Result<ClientTls, TlsError> {
        let cert = Arc::new(CertSlot::new(chain, key)?);
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(TlsError::ServerVerifier)?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(TlsError::Config)?
            .with_webpki_verifier(verifier)
            .with_client_cert_resolver(cert.clone());
        // Full handshakes only, as on the server side.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(ClientTls {
            config: Arc::new(config),
            cert,
            cluster,
        })
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The cluster whose principals this client accepts as servers.
    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    /// Presents a new certificate from the next handshake on.
    pub fn reload(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        self.cert.reload(chain, key)
    }

    pub fn cert(&self) -> &CertSlot {
        &self.cert
    }
}
