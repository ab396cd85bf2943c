//! A process's own identity, read from a certificate directory: `chain.pem` (its leaf, then the
//! intermediate), `key.pem` (the leaf's private key) and `ca.pem` (the root or roots it trusts).
//!
//! Loading checks what would otherwise fail later and less clearly, in the first handshake:
//! each file holds what it should, the key belongs to the leaf, the leaf names exactly one
//! principal, and the chain leads to a root of `ca.pem` and is valid now. Every error names the
//! file at fault.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};
use time::OffsetDateTime;

use super::error::IdentityError;
use super::files;
use super::principal::Principal;
use super::tls::provider;

/// The leaf certificate, then the intermediate that signed it.
pub const CHAIN_FILE: &str = "chain.pem";
/// The leaf's private key (mode 0600).
pub const KEY_FILE: &str = "key.pem";
/// The trusted root certificates (more than one while a root is being replaced).
pub const CA_FILE: &str = "ca.pem";
/// Most certificates in a chain file or a root file.
pub const PEM_CERTS_MAX: usize = 8;

/// A process's certificate chain, key, trusted roots and the principal its leaf names.
#[derive(Debug)]
pub struct Identity {
    principal: Principal,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
    not_after: OffsetDateTime,
    /// The leaf's serial number, lowercase hex (as revocations name it).
    serial: String,
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity {
            principal: self.principal.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            not_after: self.not_after,
            serial: self.serial.clone(),
        }
    }
}

/// The three files of a certificate directory.
struct Paths {
    chain: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Identity {
    /// Reads the identity in `dir` and checks that it is whole, consistent and valid now.
    pub fn load(dir: &Path) -> Result<Identity, IdentityError> {
        let paths = Paths {
            chain: dir.join(CHAIN_FILE),
            key: dir.join(KEY_FILE),
            ca: dir.join(CA_FILE),
        };
        let identity = Identity::parse(
            &paths,
            files::read(&paths.chain)?.as_bytes(),
            files::read(&paths.key)?.as_bytes(),
            files::read(&paths.ca)?.as_bytes(),
        )?;
        identity
            .verify_chain(UnixTime::now())
            .map_err(|reason| IdentityError::Untrusted {
                chain: paths.chain,
                ca: paths.ca,
                reason,
            })?;
        Ok(identity)
    }

    /// An identity from PEM texts already in memory (errors name the files they would be).
    /// Checks consistency but not validity in time: [`Identity::verify_chain`] does that.
    pub fn from_pem(chain: &[u8], key: &[u8], ca: &[u8]) -> Result<Identity, IdentityError> {
        let paths = Paths {
            chain: PathBuf::from(CHAIN_FILE),
            key: PathBuf::from(KEY_FILE),
            ca: PathBuf::from(CA_FILE),
        };
        Identity::parse(&paths, chain, key, ca)
    }

    fn parse(
        paths: &Paths,
        chain: &[u8],
        key: &[u8],
        ca: &[u8],
    ) -> Result<Identity, IdentityError> {
        let chain_certs = read_certs(&paths.chain, chain)?;
        let roots = read_certs(&paths.ca, ca)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| IdentityError::BadFile {
            path: paths.key.clone(),
            reason: format!("no private key: {e}"),
        })?;
        match CertifiedKey::from_der(chain_certs.clone(), key.clone_key(), &provider()) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(IdentityError::KeyMismatch {
                    cert: paths.chain.clone(),
                    key: paths.key.clone(),
                });
            }
            Err(e) => {
                return Err(IdentityError::BadFile {
                    path: paths.key.clone(),
                    reason: e.to_string(),
                });
            }
        }
        let principal = Principal::from_certificate(&chain_certs[0]).map_err(|source| {
            IdentityError::Principal {
                path: paths.chain.clone(),
                source,
            }
        })?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain_certs[0]).map_err(|e| {
            IdentityError::BadFile {
                path: paths.chain.clone(),
                reason: e.to_string(),
            }
        })?;
        let not_after = leaf.validity().not_after.to_datetime();
        let serial = super::revocation::serial_hex(&leaf);
        Ok(Identity {
            principal,
            chain: chain_certs,
            key,
            roots,
            not_after,
            serial,
        })
    }

    /// Checks at `now` that the chain leads to one of the roots and that every certificate in
    /// it is valid, as a peer's verifier will; the reason is rustls's.
    pub fn verify_chain(&self, now: UnixTime) -> Result<(), String> {
        chain_verifies(&self.chain, &self.roots, now)
    }

    /// The principal the leaf names.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Leaf first, then the intermediate.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The leaf's serial number, lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The roots as rustls's trust store.
    pub fn root_store(&self) -> Result<Arc<RootCertStore>, String> {
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store
                .add(root.clone())
                .map_err(|e| format!("{CA_FILE}: {e}"))?;
        }
        Ok(Arc::new(store))
    }
}

/// Checks at `now` that `chain` (leaf first) leads to one of `roots` and that every
/// certificate in it is valid, as a peer's verifier will; the reason is rustls's.
pub fn chain_verifies(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("an empty chain")?;
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| format!("{CA_FILE}: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(leaf, intermediates, now)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The certificates of a PEM file: at least one, at most [`PEM_CERTS_MAX`].
fn read_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let bad = |reason: String| IdentityError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("unreadable PEM: {e}")))?;
    match certs.len() {
        0 => Err(bad("no certificate in it".into())),
        n if n > PEM_CERTS_MAX => Err(bad(format!("{n} certificates: at most {PEM_CERTS_MAX}"))),
        _ => Ok(certs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::{self, CertificateAuthority};
    use crate::identity::issue::LeafRequest;
    use crate::identity::principal::{ClusterName, PrincipalKind};

    fn issue(ca_dir: &Path, out: &Path, kind: PrincipalKind, now: OffsetDateTime) {
        let ca = CertificateAuthority::open(ca_dir).unwrap();
        let request = LeafRequest::for_days(kind, vec![], now, 10).unwrap();
        ca.issue(&request)
            .unwrap()
            .write(out, true, ca.root_pin())
            .unwrap();
    }

    #[test]
    fn an_issued_directory_loads_with_its_principal() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let now = OffsetDateTime::now_utc();
        ca::init(&ca_dir, &ClusterName::new("prod").unwrap(), now).unwrap();
        let out = dir.path().join("alice");
        issue(&ca_dir, &out, PrincipalKind::User("alice".into()), now);
        let id = Identity::load(&out).unwrap();
        assert_eq!(id.principal().to_string(), "fabric://prod/user/alice");
        assert_eq!(id.chain().len(), 2);
        assert_eq!(id.roots().len(), 1);
        assert!(id.not_after() > now);
    }

    #[test]
    fn each_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let now = OffsetDateTime::now_utc();
        ca::init(&ca_dir, &ClusterName::new("prod").unwrap(), now).unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        issue(&ca_dir, &a, PrincipalKind::Node(1), now);
        issue(&ca_dir, &b, PrincipalKind::Node(2), now);

        let expect = |want: &str| {
            let err = Identity::load(&a).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in: {err}");
            err
        };
        // Another identity's key.
        std::fs::copy(b.join(KEY_FILE), a.join(KEY_FILE)).unwrap();
        let err = expect(KEY_FILE);
        assert!(err.contains("does not belong to the certificate"), "{err}");
        std::fs::write(a.join(KEY_FILE), "not a key").unwrap();
        expect(KEY_FILE);
        std::fs::remove_file(a.join(KEY_FILE)).unwrap();
        expect(KEY_FILE);
        issue(&ca_dir, &a, PrincipalKind::Node(1), now);

        // Roots of another CA: the chain leads nowhere.
        let other = dir.path().join("other-ca");
        ca::init(&other, &ClusterName::new("prod").unwrap(), now).unwrap();
        std::fs::copy(other.join(ca::ROOT_CERT_FILE), a.join(CA_FILE)).unwrap();
        let err = expect(CA_FILE);
        assert!(err.contains("not trusted by"), "{err}");
        std::fs::write(a.join(CA_FILE), "").unwrap();
        let err = expect(CA_FILE);
        assert!(err.contains("no certificate"), "{err}");
        issue(&ca_dir, &a, PrincipalKind::Node(1), now);

        std::fs::write(a.join(CHAIN_FILE), "-----BEGIN CERTIFICATE-----\nabc").unwrap();
        expect(CHAIN_FILE);
    }

    #[test]
    fn an_expired_identity_does_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let now = OffsetDateTime::now_utc();
        ca::init(&ca_dir, &ClusterName::new("prod").unwrap(), now).unwrap();
        let ca = CertificateAuthority::open(&ca_dir).unwrap();
        let mut request = LeafRequest::for_days(PrincipalKind::Node(1), vec![], now, 1).unwrap();
        request.not_before = now - time::Duration::days(3);
        request.not_after = now - time::Duration::days(2);
        let out = dir.path().join("old");
        ca.issue(&request)
            .unwrap()
            .write(&out, false, ca.root_pin())
            .unwrap();
        let err = Identity::load(&out).unwrap_err().to_string();
        assert!(err.contains(CHAIN_FILE) && err.contains("xpired"), "{err}");
    }
}
