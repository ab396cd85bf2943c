//! Joining without copied key files: a one-time token, a pin of the root CA, and a certificate
//! signing request.
//!
//! An administrator makes a token (`fabricctl join-token create`): a random id and secret, and
//! the SHA-256 pin of the root CA the administrator trusts. The cluster keeps only the
//! secret's digest. The new node makes its own key, which never leaves it, and connects to a
//! member over TLS with the [`JOIN_ALPN`] protocol and no certificate of its own: the member
//! presents its chain up to the root, and the node accepts it only if that root's key is the
//! pinned one ([`PinnedRoot`]). Only then does the node send the secret, its node id and a
//! CSR; the member redeems the token through Raft (once, before it expires) and answers with
//! the signed chain and the root, which the node checks against the pin again before it
//! writes them ([`write_joined`]).
//!
//! A member serves such a connection only the join call (see `meta::net::secure`): a caller
//! without a certificate reaches nothing else.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rcgen::KeyPair;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use sha2::{Digest, Sha256};

use super::ca::{self, spki_pin};
use super::error::IdentityError;
use super::files;
use super::load::{CA_FILE, CHAIN_FILE, Identity, KEY_FILE};
use super::principal::Principal;
use super::tls::{CertSlot, PROTOCOL_VERSIONS, provider};

/// The ALPN protocol a joining node asks for; a member answers it without asking for a
/// client certificate, and serves the connection only the join call.
pub const JOIN_ALPN: &[u8] = b"fabric-join/1";
/// The first field of a token's text, its format's version.
pub const TOKEN_PREFIX: &str = "fj1";
/// Bytes of a token's id and of its secret.
pub const TOKEN_ID_BYTES: usize = 8;
pub const TOKEN_SECRET_BYTES: usize = 16;

/// A join token as the new node is given it: `fj1.ID.SECRET.PIN`, all hex, where PIN is the
/// SHA-256 of the root CA's SubjectPublicKeyInfo.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: [u8; TOKEN_SECRET_BYTES],
    /// `sha256:` and 64 hex digits.
    pin: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A new token for the root whose pin is `pin`, from the system's random source.
    pub fn generate(pin: &str) -> Result<JoinToken, TokenError> {
        let mut id = [0u8; TOKEN_ID_BYTES];
        let mut secret = [0u8; TOKEN_SECRET_BYTES];
        let random = provider().secure_random;
        random.fill(&mut id).expect("the system's random source");
        random
            .fill(&mut secret)
            .expect("the system's random source");
        let pin_hex = pin
            .strip_prefix("sha256:")
            .filter(|h| crate::hex::decode_array::<32>(h).is_some())
            .ok_or(TokenError::Pin)?;
        Ok(JoinToken {
            id: ca::hex(&id),
            secret,
            pin: format!("sha256:{}", pin_hex.to_ascii_lowercase()),
        })
    }

    /// The token's id: not secret, it names the token in listings and logs.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The pin of the root CA the node is to trust: `sha256:` and 64 hex digits.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// What the cluster keeps of the secret: its SHA-256, hex.
    pub fn secret_digest(&self) -> String {
        secret_digest(&self.secret)
    }
}

/// The SHA-256 of a token's secret, hex.
pub fn secret_digest(secret: &[u8]) -> String {
    ca::hex(&Sha256::digest(secret))
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.id,
            ca::hex(&self.secret),
            &self.pin["sha256:".len()..]
        )
    }
}

/// Why a token's text is not a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "a join token looks like {TOKEN_PREFIX}.ID.SECRET.PIN (as `fabricctl join-token create` \
         prints it)"
    )]
    Shape,
    #[error("the join token's id is not {} hex digits", 2 * TOKEN_ID_BYTES)]
    Id,
    #[error("the join token's secret is not {} hex digits", 2 * TOKEN_SECRET_BYTES)]
    Secret,
    #[error("the join token's CA pin is not a SHA-256 (64 hex digits)")]
    Pin,
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<JoinToken, TokenError> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [prefix, id, secret, pin] = parts[..] else {
            return Err(TokenError::Shape);
        };
        if prefix != TOKEN_PREFIX {
            return Err(TokenError::Shape);
        }
        crate::hex::decode_array::<TOKEN_ID_BYTES>(id).ok_or(TokenError::Id)?;
        let secret =
            crate::hex::decode_array::<TOKEN_SECRET_BYTES>(secret).ok_or(TokenError::Secret)?;
        crate::hex::decode_array::<32>(pin).ok_or(TokenError::Pin)?;
        Ok(JoinToken {
            id: id.to_ascii_lowercase(),
            secret,
            pin: format!("sha256:{}", pin.to_ascii_lowercase()),
        })
    }
}

/// Whether `s` is the hex id of a token.
pub fn is_token_id(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && crate::hex::decode_array::<TOKEN_ID_BYTES>(s).is_some()
}

/// Whether `s` is a secret's digest as [`secret_digest`] writes it.
pub fn is_secret_digest(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && crate::hex::decode_array::<32>(s).is_some()
}

/// A new node's key and a certificate signing request over it (DER). The request names
/// nothing: what the certificate says is decided by the member that signs it.
pub fn key_and_csr() -> Result<(KeyPair, Vec<u8>), IdentityError> {
    let key = KeyPair::generate_for(ca::KEY_ALGORITHM)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// The server side: what a member presents to a joining node. The same certificate as on
/// every other connection, with the roots appended, so that a node that knows only a pin can
/// find the root and verify the chain up to it.
pub struct JoinServerTls {
    config: Arc<ServerConfig>,
    anchors: Arc<ArcSwap<Vec<CertificateDer<'static>>>>,
}

impl JoinServerTls {
    /// Presents `slot`'s certificate followed by `roots`; asks for no client certificate.
    pub fn new(
        slot: Arc<CertSlot>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<JoinServerTls, super::tls::TlsError> {
        let anchors = Arc::new(ArcSwap::from_pointee(roots));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(super::tls::TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(WithAnchors {
                slot,
                anchors: anchors.clone(),
            }));
        config.alpn_protocols = vec![JOIN_ALPN.to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(JoinServerTls {
            config: Arc::new(config),
            anchors,
        })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Presents `roots` after the chain from the next handshake on.
    pub fn update_roots(&self, roots: Vec<CertificateDer<'static>>) {
        self.anchors.store(Arc::new(roots));
    }
}

impl fmt::Debug for JoinServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinServerTls").finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct WithAnchors {
    slot: Arc<CertSlot>,
    anchors: Arc<ArcSwap<Vec<CertificateDer<'static>>>>,
}

impl ResolvesServerCert for WithAnchors {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.slot.certified();
        let mut chain = current.cert.clone();
        chain.extend(self.anchors.load().iter().cloned());
        Some(Arc::new(CertifiedKey::new(chain, current.key.clone())))
    }
}

/// The client side: a configuration that speaks [`JOIN_ALPN`], presents no certificate and
/// trusts a server only through a root whose key has the token's pin.
pub fn client_config(pin: &str) -> Result<Arc<ClientConfig>, super::tls::TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(super::tls::TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedRoot {
            pin: pin.to_owned(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Verifies a server's chain against the one certificate of it whose key has the pinned
/// digest, as a root: webpki's full path and name checks, with that root as the only anchor.
#[derive(Debug)]
pub struct PinnedRoot {
    pin: String,
}

/// The server's chain holds no certificate with the pinned key.
#[derive(Debug, thiserror::Error)]
#[error("no certificate of the server's chain has the root key the join token pins ({0})")]
struct PinMismatch(String);

impl ServerCertVerifier for PinnedRoot {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = intermediates
            .iter()
            .find(|c| spki_pin(c).is_ok_and(|p| p == self.pin))
            .ok_or_else(|| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    PinMismatch(self.pin.clone()),
                ))))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks what a member answered a join with and writes it to `dir`: the chain must go with
/// `key_pem` and lead to `ca_pem`, whose key must have the token's pin, and the leaf must name
/// `expected`. Returns the principal written.
pub fn write_joined(
    dir: &Path,
    token: &JoinToken,
    expected: &Principal,
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Principal, IdentityError> {
    let root = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| IdentityError::Request(format!("the member sent no root CA: {e}")))?;
    let pin = spki_pin(&root).map_err(IdentityError::Request)?;
    if pin != token.pin() {
        return Err(IdentityError::Request(format!(
            "the member sent a root CA with pin {pin}, not the token's {}",
            token.pin()
        )));
    }
    let identity = Identity::from_pem(chain_pem.as_bytes(), key_pem.as_bytes(), ca_pem.as_bytes())?;
    identity
        .verify_chain(UnixTime::now())
        .map_err(|e| IdentityError::Request(format!("the certificate the member sent: {e}")))?;
    if identity.principal() != expected {
        return Err(IdentityError::Request(format!(
            "the member signed a certificate for {}, not {expected}",
            identity.principal()
        )));
    }
    files::create_dir(dir)?;
    let (chain, key, ca) = (dir.join(CHAIN_FILE), dir.join(KEY_FILE), dir.join(CA_FILE));
    files::refuse_existing(&[&chain, &key], "an existing identity")?;
    files::replace(&ca, ca_pem.as_bytes(), files::CERT_FILE_MODE)?;
    files::replace(&key, key_pem.as_bytes(), files::KEY_FILE_MODE)?;
    files::replace(&chain, chain_pem.as_bytes(), files::CERT_FILE_MODE)?;
    Ok(identity.principal().clone())
}

/// Checks a renewed certificate a member signed and writes it over the identity in `dir`: the
/// chain must go with `key_pem`, name the same principal as the certificate it replaces, and
/// lead to `ca_pem` or a root `dir` trusts already, which it keeps trusting. Each file is
/// replaced atomically, the key before the chain (a reader catching one without the other
/// sees them disagree and reads again). Returns the identity written.
pub fn write_renewed(
    dir: &Path,
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Identity, IdentityError> {
    let current = Identity::load(dir)?;
    let ca = dir.join(CA_FILE);
    let roots = super::trust_bundle::with_existing_roots(&ca, ca_pem);
    let renewed = Identity::from_pem(chain_pem.as_bytes(), key_pem.as_bytes(), roots.as_bytes())?;
    renewed
        .verify_chain(UnixTime::now())
        .map_err(|e| IdentityError::Request(format!("the renewed certificate: {e}")))?;
    if renewed.principal() != current.principal() {
        return Err(IdentityError::Request(format!(
            "the member renewed a certificate for {}, not {}",
            renewed.principal(),
            current.principal()
        )));
    }
    files::replace(&ca, roots.as_bytes(), files::CERT_FILE_MODE)?;
    files::replace(
        &dir.join(KEY_FILE),
        key_pem.as_bytes(),
        files::KEY_FILE_MODE,
    )?;
    files::replace(
        &dir.join(CHAIN_FILE),
        chain_pem.as_bytes(),
        files::CERT_FILE_MODE,
    )?;
    Ok(renewed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn a_token_prints_and_parses_back() {
        let token = JoinToken::generate(PIN).unwrap();
        let text = token.to_string();
        assert!(text.starts_with("fj1."), "{text}");
        let parsed: JoinToken = text.parse().unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.pin(), PIN);
        assert_eq!(parsed.secret_digest(), token.secret_digest());
        assert!(is_token_id(parsed.id()) && is_secret_digest(&parsed.secret_digest()));
        assert!(!format!("{token:?}").contains(&ca::hex(token.secret())));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = JoinToken::generate(PIN).unwrap().to_string();
        let fields: Vec<&str> = good.split('.').collect();
        let with = |i: usize, v: &str| {
            let mut f = fields.clone();
            f[i] = v;
            f.join(".")
        };
        assert_eq!("x".parse::<JoinToken>(), Err(TokenError::Shape));
        assert_eq!(with(0, "fj2").parse::<JoinToken>(), Err(TokenError::Shape));
        assert_eq!(with(1, "abc").parse::<JoinToken>(), Err(TokenError::Id));
        assert_eq!(with(2, "zz").parse::<JoinToken>(), Err(TokenError::Secret));
        assert_eq!(with(3, "00").parse::<JoinToken>(), Err(TokenError::Pin));
        assert!(JoinToken::generate("md5:00").is_err());
    }

    #[test]
    fn a_csr_carries_a_key_the_ca_can_sign() {
        let (key, csr) = key_and_csr().unwrap();
        let parsed =
            rcgen::CertificateSigningRequestParams::from_der(&csr.as_slice().into()).unwrap();
        assert_eq!(
            rcgen::PublicKeyData::der_bytes(&parsed.public_key),
            rcgen::PublicKeyData::der_bytes(&key)
        );
    }
}
