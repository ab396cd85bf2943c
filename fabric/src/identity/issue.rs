//! Signing the certificates of nodes, gateways and users with the CA's intermediate.
//!
//! A leaf names its holder by one URI SAN, `fabric://CLUSTER/KIND/NAME`. Nodes and gateways
//! are servers as well as clients, so they may carry DNS and IP names too (`--san`): a client
//! dialling an address checks the server's certificate against it. Users are clients only. The
//! written directory (`chain.pem` leaf + intermediate, `key.pem`, `ca.pem`) is exactly what
//! [`super::load::Identity::load`] reads.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};
use time::{Duration, OffsetDateTime};

use super::ca::{
    self, CLOCK_SKEW_ALLOWANCE_SECS, CertificateAuthority, INTERMEDIATE_VALIDITY_DAYS,
};
use super::error::IdentityError;
use super::files;
use super::load::{CA_FILE, CHAIN_FILE, KEY_FILE};
use super::principal::{Principal, PrincipalKind};

/// Lifetime of a leaf when `--days` is not given. Certificates are not renewed automatically
/// yet; once they are, this shrinks to weeks.
pub const LEAF_VALIDITY_DAYS_DEFAULT: u32 = 365;
/// Longest lifetime of a leaf, in days (and never past the intermediate's end).
pub const LEAF_VALIDITY_DAYS_MAX: u32 = INTERMEDIATE_VALIDITY_DAYS as u32;
/// Most DNS and IP names one leaf carries.
pub const SERVER_NAMES_MAX: usize = 16;

/// A DNS or IP name a server certificate answers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerSan {
    Dns(String),
    Ip(IpAddr),
}

impl FromStr for ServerSan {
    type Err = IdentityError;

    /// An IP address if it parses as one, otherwise a DNS name (checked as TLS checks it).
    fn from_str(s: &str) -> Result<ServerSan, IdentityError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(ServerSan::Ip(ip));
        }
        match rustls::pki_types::DnsName::try_from(s) {
            Ok(_) if !s.is_empty() => Ok(ServerSan::Dns(s.to_ascii_lowercase())),
            _ => Err(IdentityError::Request(format!(
                "invalid --san {s:?}: want an IP address or a DNS name"
            ))),
        }
    }
}

impl std::fmt::Display for ServerSan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerSan::Dns(name) => f.write_str(name),
            ServerSan::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The names QEMU and libnbd (gnutls) give a client's files in a certificate directory.
pub const GNUTLS_CA_FILE: &str = "ca-cert.pem";
pub const GNUTLS_CLIENT_CERT_FILE: &str = "client-cert.pem";
pub const GNUTLS_CLIENT_KEY_FILE: &str = "client-key.pem";

/// What to sign: who, which server names, and when it is valid.
#[derive(Clone, Debug)]
pub struct LeafRequest {
    pub kind: PrincipalKind,
    pub server_names: Vec<ServerSan>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafRequest {
    /// A leaf valid from `now` (less the skew allowance) for `days` days.
    pub fn for_days(
        kind: PrincipalKind,
        server_names: Vec<ServerSan>,
        now: OffsetDateTime,
        days: u32,
    ) -> Result<LeafRequest, IdentityError> {
        if !(1..=LEAF_VALIDITY_DAYS_MAX).contains(&days) {
            return Err(IdentityError::Request(format!(
                "--days {days}: want 1 to {LEAF_VALIDITY_DAYS_MAX}"
            )));
        }
        let now = ca::whole_seconds(now);
        Ok(LeafRequest {
            kind,
            server_names,
            not_before: now - Duration::seconds(CLOCK_SKEW_ALLOWANCE_SECS),
            not_after: now + Duration::days(days.into()),
        })
    }
}

/// A signed leaf and its new key, not yet written anywhere.
pub struct IssuedLeaf {
    pub principal: Principal,
    /// The leaf, then the intermediate.
    pub chain_pem: String,
    pub key_pem: String,
    /// The root certificate, the trust anchor of the cluster.
    pub ca_pem: String,
    pub not_after: OffsetDateTime,
    /// Hex, as revocation lists and `openssl x509 -serial` name it.
    pub serial: String,
    pub server_names: Vec<ServerSan>,
}

/// What `cert issue` wrote (printed by `fabricctl`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssueReport {
    pub principal: Principal,
    pub chain: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// RFC 3339.
    pub not_after: String,
    pub serial: String,
    pub server_names: Vec<String>,
    pub root_pin: String,
}

impl CertificateAuthority {
    /// Signs a leaf for `request` with a fresh P-256 key. Refuses server names on a user
    /// certificate, more than [`SERVER_NAMES_MAX`] of them, an empty validity and a leaf that
    /// would outlive the intermediate. A validity wholly in the past is allowed (tests use it).
    pub fn issue(&self, request: &LeafRequest) -> Result<IssuedLeaf, IdentityError> {
        let key = KeyPair::generate_for(ca::KEY_ALGORITHM)?;
        let signed = self.sign(request, &key)?;
        Ok(IssuedLeaf {
            principal: signed.principal,
            chain_pem: signed.chain_pem,
            key_pem: key.serialize_pem(),
            ca_pem: self.root_pem.clone(),
            not_after: request.not_after,
            serial: signed.serial,
            server_names: request.server_names.clone(),
        })
    }

    /// Signs a leaf for `request` over the public key of a certificate signing request (DER),
    /// whose own signature proves that its sender holds the private key. Only the key is taken
    /// from the request: who the leaf names and what it may do come from `request` alone.
    pub fn issue_for_csr(
        &self,
        request: &LeafRequest,
        csr_der: &[u8],
    ) -> Result<SignedLeaf, IdentityError> {
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.into())
            .map_err(|e| IdentityError::Request(format!("certificate signing request: {e}")))?;
        self.sign(request, &csr.public_key)
    }

    /// The root certificate's PEM text, the trust anchor every leaf is given.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    fn sign(
        &self,
        request: &LeafRequest,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<SignedLeaf, IdentityError> {
        let principal = Principal::new(self.cluster.clone(), request.kind.clone())?;
        let is_user = matches!(request.kind, PrincipalKind::User(_));
        if is_user && !request.server_names.is_empty() {
            return Err(IdentityError::Request(
                "a user certificate takes no --san: users are only clients".into(),
            ));
        }
        if request.server_names.len() > SERVER_NAMES_MAX {
            return Err(IdentityError::Request(format!(
                "{} server names: at most {SERVER_NAMES_MAX}",
                request.server_names.len()
            )));
        }
        if request.not_after <= request.not_before {
            return Err(IdentityError::Request(
                "the validity ends before it starts".into(),
            ));
        }
        if request.not_after > self.intermediate_not_after {
            let days_left = (self.intermediate_not_after - OffsetDateTime::now_utc()).whole_days();
            return Err(IdentityError::Request(format!(
                "the certificate would outlive the intermediate CA, which expires {}; give --days \
                 of at most {days_left}, or renew the intermediate",
                ca::rfc3339(self.intermediate_not_after)
            )));
        }

        let mut params = rcgen::CertificateParams::default();
        let name = match &request.kind {
            PrincipalKind::Node(id) => id.to_string(),
            PrincipalKind::Gateway(name) | PrincipalKind::User(name) => name.clone(),
        };
        params.distinguished_name =
            ca::distinguished_name(&self.cluster, &name, Some(request.kind.label()));
        params.not_before = request.not_before;
        params.not_after = request.not_after;
        let serial = ca::random_serial();
        params.serial_number = Some(serial.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if is_user {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        let uri = principal.to_string();
        params.subject_alt_names =
            vec![SanType::URI(uri.as_str().try_into().map_err(|e| {
                IdentityError::Request(format!("{uri}: {e}"))
            })?)];
        for san in &request.server_names {
            params.subject_alt_names.push(match san {
                ServerSan::Ip(ip) => SanType::IpAddress(*ip),
                ServerSan::Dns(name) => SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|e| IdentityError::Request(format!("--san {name}: {e}")))?,
                ),
            });
        }

        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(SignedLeaf {
            principal,
            chain_pem: format!("{}\n{}", cert.pem().trim_end(), self.intermediate_pem),
            serial: serial
                .to_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }
}

/// A leaf signed over a key the CA never saw.
pub struct SignedLeaf {
    pub principal: Principal,
    /// The leaf, then the intermediate.
    pub chain_pem: String,
    /// Hex, as revocation lists and `openssl x509 -serial` name it.
    pub serial: String,
}

impl IssuedLeaf {
    /// The trust file QEMU and libnbd (gnutls) are given: the root, then the intermediate.
    /// QEMU checks its own certificate against this file alone, without the chain's
    /// intermediate, so the root alone would not do.
    pub fn gnutls_ca_pem(&self) -> String {
        let begin = "-----BEGIN CERTIFICATE-----";
        let intermediates = self
            .chain_pem
            .match_indices(begin)
            .nth(1)
            .map_or("", |(at, _)| &self.chain_pem[at..]);
        format!("{}{intermediates}", self.ca_pem)
    }

    /// Writes `chain.pem`, `key.pem` (mode 0600) and `ca.pem` into `dir` (created, mode 0700,
    /// if missing). An existing identity is replaced only with `overwrite`, each file
    /// atomically, and keeps the roots it trusted (a certificate reissued under a new root
    /// while the old one is still in the trust bundle); a reader that catches the key of one
    /// issue and the chain of another sees them disagree (the loader checks) and reads again.
    ///
    /// A user's directory also gets the same three under the names QEMU's `tls-creds-x509`
    /// and libnbd's `tls-certificates` look for (`ca-cert.pem`, `client-cert.pem`,
    /// `client-key.pem`), so that it serves as is for `qemu-img --object
    /// tls-creds-x509,dir=DIR,endpoint=client` and `nbdinfo nbds://...?tls-certificates=DIR`.
    pub fn write(
        &self,
        dir: &Path,
        overwrite: bool,
        root_pin: &str,
    ) -> Result<IssueReport, IdentityError> {
        let chain = dir.join(CHAIN_FILE);
        let key = dir.join(KEY_FILE);
        let ca = dir.join(CA_FILE);
        files::create_dir(dir)?;
        if !overwrite {
            files::refuse_existing(
                &[&chain, &key, &ca],
                "an existing identity (give --overwrite to replace it)",
            )?;
        }
        let roots = match overwrite {
            true => super::trust_bundle::with_existing_roots(&ca, &self.ca_pem),
            false => self.ca_pem.clone(),
        };
        files::replace(&ca, roots.as_bytes(), files::CERT_FILE_MODE)?;
        files::replace(&key, self.key_pem.as_bytes(), files::KEY_FILE_MODE)?;
        files::replace(&chain, self.chain_pem.as_bytes(), files::CERT_FILE_MODE)?;
        if matches!(self.principal.kind(), PrincipalKind::User(_)) {
            let trust = self.gnutls_ca_pem();
            for (name, pem, mode) in [
                (GNUTLS_CA_FILE, &trust, files::CERT_FILE_MODE),
                (GNUTLS_CLIENT_KEY_FILE, &self.key_pem, files::KEY_FILE_MODE),
                (
                    GNUTLS_CLIENT_CERT_FILE,
                    &self.chain_pem,
                    files::CERT_FILE_MODE,
                ),
            ] {
                files::replace(&dir.join(name), pem.as_bytes(), mode)?;
            }
        }
        Ok(IssueReport {
            principal: self.principal.clone(),
            chain,
            key,
            ca,
            not_after: ca::rfc3339(self.not_after),
            serial: self.serial.clone(),
            server_names: self.server_names.iter().map(|s| s.to_string()).collect(),
            root_pin: root_pin.to_string(),
        })
    }
}

/// `fabricctl cert issue`: opens the CA in `ca_dir`, signs a leaf for `kind` valid `days` days
/// from `now`, and writes it to `out_dir`.
pub fn issue_to_dir(
    ca_dir: &Path,
    out_dir: &Path,
    kind: PrincipalKind,
    server_names: Vec<ServerSan>,
    days: u32,
    overwrite: bool,
    now: OffsetDateTime,
) -> Result<IssueReport, IdentityError> {
    let request = LeafRequest::for_days(kind, server_names, now, days)?;
    let ca = CertificateAuthority::open(ca_dir)?;
    let leaf = ca.issue(&request)?;
    leaf.write(out_dir, overwrite, ca.root_pin())
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::identity::principal::ClusterName;

    fn new_ca(dir: &Path) -> CertificateAuthority {
        ca::init(
            dir,
            &ClusterName::new("prod").unwrap(),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        CertificateAuthority::open(dir).unwrap()
    }

    fn request(kind: PrincipalKind, sans: &[&str]) -> LeafRequest {
        let sans = sans.iter().map(|s| s.parse().unwrap()).collect();
        LeafRequest::for_days(kind, sans, OffsetDateTime::now_utc(), 30).unwrap()
    }

    #[test]
    fn a_node_leaf_names_its_principal_and_serves_and_dials() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path());
        let leaf = ca
            .issue(&request(
                PrincipalKind::Node(3),
                &["127.0.0.1", "node3.prod"],
            ))
            .unwrap();
        let chain: Vec<CertificateDer<'_>> =
            CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(chain.len(), 2, "leaf and intermediate");
        let intermediate = CertificateDer::from_pem_slice(ca.intermediate_pem.as_bytes()).unwrap();
        assert_eq!(chain[1], intermediate);
        let p = Principal::from_peer_chain(&chain, ca.cluster()).unwrap();
        assert_eq!(p.to_string(), "fabric://prod/node/3");

        let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let sans = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 3);
        assert_eq!(cert.raw_serial_as_string().replace(':', ""), leaf.serial);
    }

    #[test]
    fn a_user_leaf_is_a_client_only_and_takes_no_server_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path());
        let leaf = ca
            .issue(&request(PrincipalKind::User("alice".into()), &[]))
            .unwrap();
        let chain = CertificateDer::from_pem_slice(leaf.chain_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&chain).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);

        let err = ca
            .issue(&request(PrincipalKind::User("alice".into()), &["10.0.0.1"]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("takes no --san"), "{err}");
    }

    #[test]
    fn bad_requests_are_refused_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path());
        let now = OffsetDateTime::now_utc();
        for (result, want) in [
            (
                ca.issue(&request(PrincipalKind::User("Alice".into()), &[]))
                    .err(),
                "invalid user name",
            ),
            (
                ca.issue(&request(PrincipalKind::Gateway("../hv".into()), &[]))
                    .err(),
                "invalid gateway name",
            ),
            (
                ca.issue(&request(PrincipalKind::Node(0), &[])).err(),
                "invalid node id",
            ),
            (
                LeafRequest::for_days(PrincipalKind::Node(1), vec![], now, 0).err(),
                "--days 0",
            ),
            (
                LeafRequest::for_days(PrincipalKind::Node(1), vec![], now, 5000).err(),
                "--days 5000",
            ),
            ("not a name!".parse::<ServerSan>().err(), "invalid --san"),
        ] {
            let err = result.expect(want).to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let mut long = request(PrincipalKind::Node(1), &[]);
        long.not_after = ca.intermediate_not_after() + Duration::days(1);
        let err = ca.issue(&long).err().unwrap().to_string();
        assert!(err.contains("would outlive the intermediate CA"), "{err}");
        let many = vec!["127.0.0.1".parse().unwrap(); SERVER_NAMES_MAX + 1];
        let many = LeafRequest::for_days(PrincipalKind::Node(1), many, now, 1).unwrap();
        assert!(ca.issue(&many).is_err());
    }

    #[test]
    fn an_identity_is_replaced_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        new_ca(&ca_dir);
        let out = dir.path().join("node-1");
        let now = OffsetDateTime::now_utc();
        let first = issue_to_dir(
            &ca_dir,
            &out,
            PrincipalKind::Node(1),
            vec![],
            10,
            false,
            now,
        )
        .unwrap();
        let err = issue_to_dir(
            &ca_dir,
            &out,
            PrincipalKind::Node(1),
            vec![],
            10,
            false,
            now,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("--overwrite"), "{err}");
        let second =
            issue_to_dir(&ca_dir, &out, PrincipalKind::Node(1), vec![], 10, true, now).unwrap();
        assert_ne!(first.serial, second.serial);
        assert_eq!(first.root_pin, second.root_pin);
    }
}
