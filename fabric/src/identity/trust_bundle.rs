//! The trust bundle: the root CAs a cluster trusts, as the replicated state keeps them and as
//! every process writes them to its `ca.pem`.
//!
//! Replacing the root CA takes three steps, each begun only once the one before reached every
//! node: add the new root (every process then trusts both), reissue every certificate under
//! it, retire the old root. A process follows the bundle by rewriting its `ca.pem` and
//! reloading, without a restart ([`follow`]). It never writes a bundle its own certificate
//! does not chain to: it keeps its issuer's root too (and says so), since otherwise its next
//! start would refuse its own certificate.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use super::ca::spki_pin;
use super::load::{CA_FILE, chain_verifies};
use super::{ClusterTls, Identity, IdentityError, files};

/// Most roots a bundle holds (two while a root is replaced; room for an overlap).
pub const TRUST_ROOTS_MAX: usize = 4;
/// Longest root certificate kept, in PEM bytes.
pub const ROOT_PEM_BYTES_MAX: usize = 8 * 1024;

/// One root CA certificate of a bundle.
#[derive(Clone, Debug)]
pub struct Root {
    /// `sha256:` and the hex SHA-256 of its SubjectPublicKeyInfo.
    pub pin: String,
    pub subject: String,
    pub not_after: OffsetDateTime,
    /// Its PEM text, one certificate, ending in a newline.
    pub pem: String,
    pub der: CertificateDer<'static>,
}

/// Parses one root CA certificate: exactly one certificate, a CA, issued by itself.
pub fn parse_root(pem: &str) -> Result<Root, String> {
    if pem.len() > ROOT_PEM_BYTES_MAX {
        return Err(format!(
            "a root certificate of {} bytes: at most {ROOT_PEM_BYTES_MAX}",
            pem.len()
        ));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    let [der] = <[CertificateDer<'static>; 1]>::try_from(certs).map_err(|certs| {
        format!(
            "{} certificates where one root CA certificate belongs",
            certs.len()
        )
    })?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| format!("not X.509: {e}"))?;
    if !cert.is_ca() {
        return Err("the certificate is not a CA's".into());
    }
    if cert.issuer() != cert.subject() {
        return Err(format!(
            "{} is issued by {}: a root CA issues its own certificate",
            cert.subject(),
            cert.issuer()
        ));
    }
    Ok(Root {
        pin: spki_pin(&der)?,
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.to_datetime(),
        pem: format!("{}\n", pem.trim()),
        der: der.clone(),
    })
}

/// The certificates of a PEM text, each as its own PEM block.
pub fn pem_blocks(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .filter_map(|block| {
            block
                .find("-----BEGIN CERTIFICATE-----")
                .map(|at| &block[at..])
        })
        .filter(|block| block.ends_with(END))
        .map(|block| format!("{block}\n"))
        .collect()
}

/// `root_pem` after the roots of the `ca.pem` at `ca` (if it exists), each once.
pub fn with_existing_roots(ca: &Path, root_pem: &str) -> String {
    let existing = std::fs::read_to_string(ca).unwrap_or_default();
    let mut blocks = pem_blocks(&existing);
    blocks.truncate(TRUST_ROOTS_MAX - 1);
    let new = format!("{}\n", root_pem.trim());
    blocks.retain(|b| b.trim() != new.trim());
    blocks.push(new);
    blocks.concat()
}

/// The index of the root among `roots` that `chain` leads to at `now`.
pub fn issuing_root(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    now: UnixTime,
) -> Option<usize> {
    (0..roots.len()).find(|&i| chain_verifies(chain, &roots[i..=i], now).is_ok())
}

/// The pin of the root `identity`'s certificate chains to, among its own roots.
pub fn identity_issuer_pin(identity: &Identity) -> Option<String> {
    let i = issuing_root(identity.chain(), identity.roots(), UnixTime::now())?;
    spki_pin(&identity.roots()[i]).ok()
}

/// Makes `tls`'s `ca.pem` hold the roots of `bundle` (PEM, oldest first) and reloads it, if
/// it held others; an empty bundle changes nothing. Whether the file changed.
pub fn follow(tls: &ClusterTls, bundle: &[String]) -> Result<bool, IdentityError> {
    let Some(dir) = tls.dir() else {
        return Ok(false);
    };
    if bundle.is_empty() {
        return Ok(false);
    }
    let mut wanted: Vec<Root> = bundle
        .iter()
        .map(|pem| parse_root(pem))
        .collect::<Result<_, _>>()
        .map_err(|e| IdentityError::Request(format!("the cluster's trust bundle: {e}")))?;
    let identity = Identity::load(dir)?;
    let ders: Vec<CertificateDer<'static>> = wanted.iter().map(|r| r.der.clone()).collect();
    let now = UnixTime::now();
    if issuing_root(identity.chain(), &ders, now).is_none() {
        // Keep the root this process's own certificate chains to, until it is reissued.
        let ca = dir.join(CA_FILE);
        let own = pem_blocks(&files::read(&ca)?)
            .into_iter()
            .filter_map(|pem| parse_root(&pem).ok())
            .find(|r| chain_verifies(identity.chain(), std::slice::from_ref(&r.der), now).is_ok());
        if let Some(own) = own {
            tracing::warn!(
                root = %own.pin,
                "this process's certificate chains to a root the trust bundle no longer holds; \
                 it keeps trusting that root until its certificate is reissued"
            );
            wanted.push(own);
        }
    }
    let now_roots: Vec<&CertificateDer<'static>> = identity.roots().iter().collect();
    let wanted_roots: Vec<&CertificateDer<'static>> = wanted.iter().map(|r| &r.der).collect();
    if now_roots == wanted_roots {
        return Ok(false);
    }
    let text: String = wanted.iter().map(|r| r.pem.as_str()).collect();
    files::replace(&dir.join(CA_FILE), text.as_bytes(), files::CERT_FILE_MODE)?;
    tls.reload()?;
    tracing::info!(
        roots = %wanted.iter().map(|r| r.pin.as_str()).collect::<Vec<_>>().join(","),
        "trust bundle written to ca.pem"
    );
    Ok(true)
}

/// The roots a process trusts, as its `ca.pem` holds them, joined by commas: what it
/// reports for drift.
pub fn pins(roots: &[CertificateDer<'static>]) -> String {
    roots
        .iter()
        .map(|r| spki_pin(r).unwrap_or_else(|e| format!("unreadable: {e}")))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::{self, CertificateAuthority};
    use crate::identity::issue::LeafRequest;
    use crate::identity::{ClusterName, PrincipalKind};

    fn new_ca(dir: &Path) -> CertificateAuthority {
        let cluster = ClusterName::new("prod").unwrap();
        ca::init(dir, &cluster, OffsetDateTime::now_utc()).unwrap();
        CertificateAuthority::open(dir).unwrap()
    }

    #[test]
    fn a_process_follows_the_bundle_but_keeps_the_root_of_its_own_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let old = new_ca(&tmp.path().join("old"));
        let new = new_ca(&tmp.path().join("new"));
        let node = tmp.path().join("node");
        let request = LeafRequest::for_days(
            PrincipalKind::Node(3),
            Vec::new(),
            OffsetDateTime::now_utc(),
            30,
        )
        .unwrap();
        old.issue(&request)
            .unwrap()
            .write(&node, false, old.root_pin())
            .unwrap();
        let tls = ClusterTls::load(&node).unwrap();
        let old_root = parse_root(old.root_pem()).unwrap();
        let new_root = parse_root(new.root_pem()).unwrap();
        assert_eq!(old_root.pin, old.root_pin());
        assert!(parse_root("nonsense").is_err());

        // Step one: both roots.
        let both = vec![old_root.pem.clone(), new_root.pem.clone()];
        assert!(follow(&tls, &both).unwrap());
        assert!(!follow(&tls, &both).unwrap(), "written once");
        let loaded = Identity::load(&node).unwrap();
        assert_eq!(
            pins(loaded.roots()),
            format!("{},{}", old_root.pin, new_root.pin)
        );
        assert_eq!(identity_issuer_pin(&loaded).unwrap(), old_root.pin);

        // The old root retired while this certificate still chains to it: it stays.
        assert!(follow(&tls, std::slice::from_ref(&new_root.pem)).unwrap());
        let loaded = Identity::load(&node).unwrap();
        assert_eq!(
            pins(loaded.roots()),
            format!("{},{}", new_root.pin, old_root.pin)
        );

        // Reissued under the new root: the old one goes.
        new.issue(&request)
            .unwrap()
            .write(&node, true, new.root_pin())
            .unwrap();
        tls.reload().unwrap();
        assert!(follow(&tls, std::slice::from_ref(&new_root.pem)).unwrap());
        let loaded = Identity::load(&node).unwrap();
        assert_eq!(pins(loaded.roots()), new_root.pin);
        assert_eq!(identity_issuer_pin(&loaded).unwrap(), new_root.pin);
    }
}
