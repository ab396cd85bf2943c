//! The certificate of the cell key: the cluster's CA vouches, in an X.509 certificate, that an
//! ed25519 key is the cell key of cluster `CLUSTER` (URI `fabric://CLUSTER/cell-key`). Whoever
//! holds only the root certificate can then check an audit checkpoint offline: the checkpoint
//! is signed by the key, the key certified by the intermediate, the intermediate by the root.
//!
//! The URI names no principal, so the certificate is good for no TLS connection; and it has no
//! extended key usage, so it claims nothing beyond its key.

use rcgen::{IsCa, KeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use time::{Duration, OffsetDateTime};

use super::ca::{self, CLOCK_SKEW_ALLOWANCE_SECS, CertificateAuthority};
use super::error::IdentityError;
use super::principal::ClusterName;
use super::tls::provider;

/// The URI kind a cell key certificate carries.
pub const CELL_KEY_URI_KIND: &str = "cell-key";

/// DER of an ed25519 SubjectPublicKeyInfo, up to the key's 32 bytes (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn spki(key: &[u8; 32]) -> Vec<u8> {
    [&ED25519_SPKI_PREFIX[..], key].concat()
}

impl CertificateAuthority {
    /// Certifies ed25519 `key` as this cluster's cell key until the intermediate expires.
    /// Returns the chain (certificate, intermediate), PEM.
    pub fn certify_cell_key(
        &self,
        key: &[u8; 32],
        now: OffsetDateTime,
    ) -> Result<String, IdentityError> {
        let public = rcgen::SubjectPublicKeyInfo::from_der(&spki(key))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name =
            ca::distinguished_name(&self.cluster, "cell key", Some(CELL_KEY_URI_KIND));
        params.not_before = ca::whole_seconds(now) - Duration::seconds(CLOCK_SKEW_ALLOWANCE_SECS);
        params.not_after = self.intermediate_not_after;
        params.serial_number = Some(ca::random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let uri = format!("fabric://{}/{CELL_KEY_URI_KIND}", self.cluster.as_str());
        params.subject_alt_names =
            vec![SanType::URI(uri.as_str().try_into().map_err(|e| {
                IdentityError::Request(format!("{uri}: {e}"))
            })?)];
        let cert = params.signed_by(&public, &self.issuer)?;
        Ok(format!(
            "{}\n{}",
            cert.pem().trim_end(),
            self.intermediate_pem
        ))
    }
}

/// Checks that `chain_pem` certifies ed25519 `key` (hex) as a cell key under one of `roots`
/// (more than one across a root CA's replacement), valid at `at_ms`; returns the cluster it
/// names.
pub fn verify_cell_key(
    chain_pem: &str,
    key: &str,
    roots: &[CertificateDer<'_>],
    at_ms: u64,
) -> Result<ClusterName, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the cell key's certificate chain: {e}"))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or("the cell key's certificate chain is empty")?;
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone().into_owned())
            .map_err(|e| format!("the root CA: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(store.into(), provider())
        .build()
        .map_err(|e| e.to_string())?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_millis(at_ms));
    verifier
        .verify_client_cert(leaf, intermediates, at)
        .map_err(|e| format!("the cell key's certificate does not lead to the root CA: {e}"))?;

    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let want = crate::hex::decode_array::<32>(key).ok_or("the cell key is not 32 bytes of hex")?;
    if cert.tbs_certificate.subject_pki.raw != spki(&want).as_slice() {
        return Err("the certificate is of another key".into());
    }
    let uri = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
        })
        .ok_or("the certificate names no URI")?;
    let cluster = uri
        .strip_prefix("fabric://")
        .and_then(|rest| rest.strip_suffix(&format!("/{CELL_KEY_URI_KIND}")))
        .ok_or_else(|| format!("the certificate names {uri}, not a cell key"))?;
    ClusterName::new(cluster).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certified_cell_key_verifies_under_its_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterName::new("prod").unwrap();
        let now = OffsetDateTime::now_utc();
        ca::init(dir.path(), &cluster, now).unwrap();
        let ca = CertificateAuthority::open(dir.path()).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
        let public = key.verifying_key().to_bytes();
        let chain = ca.certify_cell_key(&public, now).unwrap();
        let root = CertificateDer::from_pem_slice(ca.root_pem().as_bytes()).unwrap();
        let at = (now.unix_timestamp() as u64) * 1000;
        let hex = crate::hex::encode(&public);
        assert_eq!(
            verify_cell_key(&chain, &hex, std::slice::from_ref(&root), at).unwrap(),
            cluster
        );
        let other = crate::hex::encode(&[6u8; 32]);
        assert!(verify_cell_key(&chain, &other, std::slice::from_ref(&root), at).is_err());

        let elsewhere = tempfile::tempdir().unwrap();
        ca::init(elsewhere.path(), &cluster, now).unwrap();
        let foreign = CertificateAuthority::open(elsewhere.path()).unwrap();
        let foreign_root = CertificateDer::from_pem_slice(foreign.root_pem().as_bytes()).unwrap();
        let err =
            verify_cell_key(&chain, &hex, std::slice::from_ref(&foreign_root), at).unwrap_err();
        assert!(err.contains("does not lead to the root"), "{err}");
    }
}
