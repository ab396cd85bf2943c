//! The cluster's certificate authority: a root and the cell intermediate it signs.
//!
//! `fabricctl ca init` makes both in one directory. The root signs only the intermediate; its
//! key (`root.key.pem`) is not needed again until the intermediate is renewed, so it can be
//! moved offline right away. The intermediate signs the day-to-day certificates of nodes,
//! gateways and users (see [`super::issue`]); `ca.pem`, the root certificate, is what every
//! process trusts, and its SHA-256 pin is what a joining node will check.
//!
//! Path length constraints keep the shape fixed: the root may sign one level of CA (the
//! intermediate), the intermediate may sign no CA at all, only leaves.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use super::error::IdentityError;
use super::files;
use super::principal::ClusterName;
use super::tls::provider;

/// The root certificate: the trust anchor every process of the cluster is given.
pub const ROOT_CERT_FILE: &str = "ca.pem";
/// The root's private key: move it offline after `ca init`.
pub const ROOT_KEY_FILE: &str = "root.key.pem";
/// The intermediate certificate, signed by the root.
pub const INTERMEDIATE_CERT_FILE: &str = "intermediate.pem";
/// The intermediate's private key, which signs leaves.
pub const INTERMEDIATE_KEY_FILE: &str = "intermediate.key.pem";
/// Which cluster the CA belongs to (JSON).
pub const CA_INFO_FILE: &str = "ca.json";

/// Lifetime of the root, in days (10 years).
pub const ROOT_VALIDITY_DAYS: i64 = 3652;
/// Lifetime of the intermediate, in days (2 years).
pub const INTERMEDIATE_VALIDITY_DAYS: i64 = 730;
/// Every certificate is valid from this long before it was made, so that a peer whose clock is
/// a little behind does not refuse it as not yet valid.
pub const CLOCK_SKEW_ALLOWANCE_SECS: i64 = 300;
/// Random bytes in a serial number (RFC 5280 allows up to 20 octets).
const SERIAL_BYTES: usize = 16;

const _: () = assert!(INTERMEDIATE_VALIDITY_DAYS < ROOT_VALIDITY_DAYS);

/// The root is P-384 (it lives ten years); the intermediate and leaves are P-256.
const ROOT_KEY_ALGORITHM: &rcgen::SignatureAlgorithm = &rcgen::PKCS_ECDSA_P384_SHA384;
pub(crate) const KEY_ALGORITHM: &rcgen::SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;

/// What `ca init` wrote (printed by `fabricctl`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaReport {
    pub cluster: ClusterName,
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    pub intermediate_cert: PathBuf,
    pub intermediate_key: PathBuf,
    /// RFC 3339.
    pub root_not_after: String,
    /// RFC 3339.
    pub intermediate_not_after: String,
    /// `sha256:` and the hex SHA-256 of the root's SubjectPublicKeyInfo.
    pub root_pin: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaInfo {
    cluster: String,
}

/// Creates a root CA and its intermediate for `cluster` in `dir` (created, mode 0700, if
/// missing), valid from `now`. Refuses if any of the CA's files is already there: a CA's keys
/// are never overwritten.
pub fn init(
    dir: &Path,
    cluster: &ClusterName,
    now: OffsetDateTime,
) -> Result<CaReport, IdentityError> {
    let now = whole_seconds(now);
    let paths = CaPaths::new(dir);
    files::create_dir(dir)?;
    files::refuse_existing(&paths.all(), "an existing CA")?;

    let root_key = KeyPair::generate_for(ROOT_KEY_ALGORITHM)?;
    let root_name = format!("Fabric root CA {}", key_tag(&root_key));
    let mut root = ca_params(cluster, &root_name, now, ROOT_VALIDITY_DAYS);
    root.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    let root_cert = root.self_signed(&root_key)?;
    let root_not_after = rfc3339(root.not_after);
    let root_issuer = Issuer::new(root, &root_key);

    let intermediate_key = KeyPair::generate_for(KEY_ALGORITHM)?;
    let intermediate_name = format!("Fabric intermediate CA {}", key_tag(&intermediate_key));
    let mut intermediate = ca_params(cluster, &intermediate_name, now, INTERMEDIATE_VALIDITY_DAYS);
    intermediate.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    intermediate.use_authority_key_identifier_extension = true;
    let intermediate_not_after = rfc3339(intermediate.not_after);
    let intermediate_cert = intermediate.signed_by(&intermediate_key, &root_issuer)?;

    let info = serde_json::to_vec_pretty(&CaInfo {
        cluster: cluster.to_string(),
    })
    .expect("serialize CA info");
    // Keys first, the info file last: a directory with `ca.json` holds a whole CA.
    files::write_new(
        &paths.root_key,
        root_key.serialize_pem().as_bytes(),
        files::KEY_FILE_MODE,
    )?;
    files::write_new(
        &paths.root_cert,
        root_cert.pem().as_bytes(),
        files::CERT_FILE_MODE,
    )?;
    files::write_new(
        &paths.intermediate_key,
        intermediate_key.serialize_pem().as_bytes(),
        files::KEY_FILE_MODE,
    )?;
    files::write_new(
        &paths.intermediate_cert,
        intermediate_cert.pem().as_bytes(),
        files::CERT_FILE_MODE,
    )?;
    files::write_new(&paths.info, &info, files::CERT_FILE_MODE)?;
    files::sync_dir(dir)?;

    Ok(CaReport {
        cluster: cluster.clone(),
        root_pin: spki_pin(root_cert.der()).expect("parse the root just made"),
        root_cert: paths.root_cert,
        root_key: paths.root_key,
        intermediate_cert: paths.intermediate_cert,
        intermediate_key: paths.intermediate_key,
        root_not_after,
        intermediate_not_after,
    })
}

/// The first 8 hex digits of a key's pin. In a CA's name it tells two CAs of one cluster
/// apart, for people and for path building (a peer of another CA is then refused as signed by
/// an unknown issuer, not as a bad signature under a look-alike name); for a root it is the
/// start of the pin `ca init` prints.
fn key_tag(key: &KeyPair) -> String {
    hex(&Sha256::digest(key.subject_public_key_info()))[..8].to_string()
}

/// Parameters shared by the root and the intermediate: a CA that signs certificates and
/// revocation lists, and nothing else.
fn ca_params(
    cluster: &ClusterName,
    common_name: &str,
    now: OffsetDateTime,
    days: i64,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(cluster, common_name, None);
    params.not_before = now - Duration::seconds(CLOCK_SKEW_ALLOWANCE_SECS);
    params.not_after = now + Duration::days(days);
    params.serial_number = Some(random_serial());
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Subject of every certificate the CA makes: `O=fabric CLUSTER`, an optional `OU` (the
/// principal kind for leaves) and the `CN`. Informational only: identity is the URI SAN.
pub(crate) fn distinguished_name(
    cluster: &ClusterName,
    common_name: &str,
    unit: Option<&str>,
) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, format!("fabric {cluster}"));
    if let Some(unit) = unit {
        dn.push(DnType::OrganizationalUnitName, unit);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A positive, random serial number, so that a revocation list names exactly one certificate.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; SERIAL_BYTES];
    provider()
        .secure_random
        .fill(&mut bytes)
        .expect("system random source");
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never zero, never a leading zero byte
    SerialNumber::from_slice(&bytes)
}

/// The pin of a CA certificate: `sha256:` and the hex SHA-256 of its SubjectPublicKeyInfo (the
/// form kubeadm's discovery hash also uses), stable across re-signing the same key.
pub fn spki_pin(der: &CertificateDer<'_>) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let digest = Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", hex(&digest)))
}

pub(crate) use crate::hex::encode as hex;

/// `t` without its fraction of a second: certificates hold whole seconds, and reports say what
/// the certificate says.
pub(crate) fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).expect("0 is a valid nanosecond")
}

/// RFC 3339 text of a time, for reports.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format a certificate time")
}

/// The paths of a CA directory's files.
struct CaPaths {
    root_cert: PathBuf,
    root_key: PathBuf,
    intermediate_cert: PathBuf,
    intermediate_key: PathBuf,
    info: PathBuf,
}

impl CaPaths {
    fn new(dir: &Path) -> CaPaths {
        CaPaths {
            root_cert: dir.join(ROOT_CERT_FILE),
            root_key: dir.join(ROOT_KEY_FILE),
            intermediate_cert: dir.join(INTERMEDIATE_CERT_FILE),
            intermediate_key: dir.join(INTERMEDIATE_KEY_FILE),
            info: dir.join(CA_INFO_FILE),
        }
    }

    fn all(&self) -> [&Path; 5] {
        [
            &self.root_cert,
            &self.root_key,
            &self.intermediate_cert,
            &self.intermediate_key,
            &self.info,
        ]
    }
}

/// The online half of a CA directory: the intermediate that signs leaves, and the root
/// certificate leaves are given as their trust anchor. Opening it never reads the root key.
pub struct CertificateAuthority {
    pub(crate) cluster: ClusterName,
    pub(crate) root_pem: String,
    pub(crate) root_pin: String,
    /// The intermediate's PEM text, ending in a newline (the second half of every chain).
    pub(crate) intermediate_pem: String,
    pub(crate) intermediate_not_after: OffsetDateTime,
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cluster", &self.cluster.as_str())
            .field("root_pin", &self.root_pin)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Opens the CA in `dir` (made by [`init`]); errors name the file at fault.
    pub fn open(dir: &Path) -> Result<CertificateAuthority, IdentityError> {
        let paths = CaPaths::new(dir);
        let bad = |path: &Path, reason: String| IdentityError::BadFile {
            path: path.to_path_buf(),
            reason,
        };

        let info: CaInfo = serde_json::from_str(&files::read(&paths.info)?)
            .map_err(|e| bad(&paths.info, e.to_string()))?;
        let cluster =
            ClusterName::new(&info.cluster).map_err(|source| IdentityError::Principal {
                path: paths.info.clone(),
                source,
            })?;

        let root_pem = files::read(&paths.root_cert)?;
        let root_der = CertificateDer::from_pem_slice(root_pem.as_bytes())
            .map_err(|e| bad(&paths.root_cert, format!("no certificate: {e}")))?;
        let root_pin = spki_pin(&root_der).map_err(|e| bad(&paths.root_cert, e))?;

        let intermediate_pem = files::read(&paths.intermediate_cert)?;
        let intermediate_der = CertificateDer::from_pem_slice(intermediate_pem.as_bytes())
            .map_err(|e| bad(&paths.intermediate_cert, format!("no certificate: {e}")))?
            .into_owned();
        let (_, parsed) = x509_parser::parse_x509_certificate(&intermediate_der)
            .map_err(|e| bad(&paths.intermediate_cert, e.to_string()))?;
        if !parsed.is_ca() {
            return Err(bad(&paths.intermediate_cert, "not a CA certificate".into()));
        }
        let intermediate_not_after = parsed.validity().not_after.to_datetime();
        let spki = parsed.tbs_certificate.subject_pki.raw.to_vec();

        let key = KeyPair::from_pem(&files::read(&paths.intermediate_key)?).map_err(|e| {
            bad(
                &paths.intermediate_key,
                format!("no usable private key: {e}"),
            )
        })?;
        if key.subject_public_key_info() != spki {
            return Err(IdentityError::KeyMismatch {
                cert: paths.intermediate_cert,
                key: paths.intermediate_key,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&intermediate_der, key)
            .map_err(|e| bad(&paths.intermediate_cert, e.to_string()))?;
        Ok(CertificateAuthority {
            cluster,
            root_pem,
            root_pin,
            intermediate_pem: format!("{}\n", intermediate_pem.trim()),
            intermediate_not_after,
            issuer,
        })
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    /// `sha256:` and the hex SHA-256 of the root's SubjectPublicKeyInfo.
    pub fn root_pin(&self) -> &str {
        &self.root_pin
    }

    /// When the intermediate expires: no leaf it signs may outlive it.
    pub fn intermediate_not_after(&self) -> OffsetDateTime {
        self.intermediate_not_after
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn init_writes_a_root_and_an_intermediate_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let cluster = ClusterName::new("prod").unwrap();
        let report = init(&ca_dir, &cluster, now()).unwrap();
        assert!(report.root_pin.starts_with("sha256:") && report.root_pin.len() == 7 + 64);
        for (path, mode) in [
            (&report.root_key, 0o600),
            (&report.intermediate_key, 0o600),
            (&report.root_cert, 0o644),
            (&report.intermediate_cert, 0o644),
        ] {
            let m = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, mode, "{}", path.display());
        }
        let m = std::fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o700);

        let root_pem = std::fs::read(&report.root_cert).unwrap();
        let root = CertificateDer::from_pem_slice(&root_pem).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(&root).unwrap();
        let inter_pem = std::fs::read(&report.intermediate_cert).unwrap();
        let inter = CertificateDer::from_pem_slice(&inter_pem).unwrap();
        let (_, inter) = x509_parser::parse_x509_certificate(&inter).unwrap();

        let days = |c: &x509_parser::certificate::X509Certificate<'_>| {
            (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 86400
        };
        assert_eq!(days(&root), ROOT_VALIDITY_DAYS);
        assert_eq!(days(&inter), INTERMEDIATE_VALIDITY_DAYS);
        let path_len = |c: &x509_parser::certificate::X509Certificate<'_>| {
            let bc = c.basic_constraints().unwrap().unwrap().value;
            assert!(bc.ca);
            bc.path_len_constraint
        };
        assert_eq!(path_len(&root), Some(1));
        assert_eq!(path_len(&inter), Some(0));
        for c in [&root, &inter] {
            let ku = c.key_usage().unwrap().unwrap().value;
            assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        }
        assert_eq!(inter.issuer(), root.subject());
        let cn = root
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, format!("Fabric root CA {}", &report.root_pin[7..15]));

        let ca = CertificateAuthority::open(&ca_dir).unwrap();
        assert_eq!(ca.cluster(), &cluster);
        assert_eq!(ca.root_pin(), report.root_pin);
    }

    #[test]
    fn init_never_overwrites_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterName::new("prod").unwrap();
        init(dir.path(), &cluster, now()).unwrap();
        let key_before = std::fs::read(dir.path().join(ROOT_KEY_FILE)).unwrap();
        let err = init(dir.path(), &cluster, now()).unwrap_err();
        assert!(matches!(err, IdentityError::Exists { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("refusing to overwrite an existing CA"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(dir.path().join(ROOT_KEY_FILE)).unwrap(),
            key_before
        );
    }

    #[test]
    fn open_names_the_file_that_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterName::new("prod").unwrap();
        init(dir.path(), &cluster, now()).unwrap();

        // The intermediate's key replaced by another CA's.
        let other = tempfile::tempdir().unwrap();
        init(other.path(), &cluster, now()).unwrap();
        std::fs::copy(
            other.path().join(INTERMEDIATE_KEY_FILE),
            dir.path().join(INTERMEDIATE_KEY_FILE),
        )
        .unwrap();
        let err = CertificateAuthority::open(dir.path()).err().unwrap();
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains(INTERMEDIATE_KEY_FILE), "{err}");

        std::fs::write(dir.path().join(INTERMEDIATE_CERT_FILE), "junk").unwrap();
        let err = CertificateAuthority::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains(INTERMEDIATE_CERT_FILE), "{err}");

        std::fs::remove_file(dir.path().join(CA_INFO_FILE)).unwrap();
        let err = CertificateAuthority::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains(CA_INFO_FILE), "{err}");
    }
}
