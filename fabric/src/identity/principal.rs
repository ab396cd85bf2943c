//! Who a peer is: the typed principal a certificate names, and the rules for its names.
//!
//! A Fabric identity is one URI in a certificate's subject alternative names:
//! `fabric://CLUSTER/node/ID`, `fabric://CLUSTER/gateway/NAME` or `fabric://CLUSTER/user/NAME`.
//! Nothing else in a certificate (common name, DNS or IP names, other URIs) says who the holder
//! is; DNS and IP names only let a client check it reached the server it dialled. A certificate
//! naming no principal, or two, is refused rather than guessed at, and so is one of another
//! cluster, even when a trusted CA signed it.
//!
//! Names are stricter than volume names: lowercase only, so that two principals can never
//! differ by case alone, and they start with a letter or digit.

use std::fmt;
use std::str::FromStr;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// URI scheme of every principal.
pub const PRINCIPAL_URI_SCHEME: &str = "fabric";
/// Longest cluster name, in bytes (a DNS label: it sits where a URI's host does).
pub const CLUSTER_NAME_MAX_BYTES: usize = 63;
/// Longest gateway or user name, in bytes (the same bound as a volume name).
pub const PRINCIPAL_NAME_MAX_BYTES: usize = 64;

/// A validated cluster name: 1 to 63 bytes of lowercase ASCII letters, digits and `-`, starting
/// and ending with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(name: &str) -> Result<ClusterName, PrincipalError> {
        let bytes = name.as_bytes();
        let edge_ok =
            |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok = name.len() <= CLUSTER_NAME_MAX_BYTES
            && edge_ok(bytes.first())
            && edge_ok(bytes.last())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok {
            Ok(ClusterName(name.to_string()))
        } else {
            Err(PrincipalError::InvalidClusterName(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of holder a certificate names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PrincipalKind {
    /// A storage or metadata node, by its node id (never 0).
    Node(u64),
    /// A volume driver (`fabricd gateway`) on a hypervisor host.
    Gateway(String),
    /// A person or tool running `fabricctl`.
    User(String),
}

impl PrincipalKind {
    /// The kind's path segment in the URI.
    pub fn label(&self) -> &'static str {
        match self {
            PrincipalKind::Node(_) => "node",
            PrincipalKind::Gateway(_) => "gateway",
            PrincipalKind::User(_) => "user",
        }
    }

    /// Builds a kind from its label and name, checking the name.
    pub fn from_parts(label: &str, name: &str) -> Result<PrincipalKind, PrincipalError> {
        let kind = match label {
            "node" => PrincipalKind::Node(parse_node_id(name)?),
            "gateway" => PrincipalKind::Gateway(name.to_string()),
            "user" => PrincipalKind::User(name.to_string()),
            other => return Err(PrincipalError::UnknownKind(other.to_string())),
        };
        kind.validate()?;
        Ok(kind)
    }

    fn validate(&self) -> Result<(), PrincipalError> {
        match self {
            PrincipalKind::Node(0) => Err(PrincipalError::InvalidNodeId("0".into())),
            PrincipalKind::Node(_) => Ok(()),
            PrincipalKind::Gateway(name) | PrincipalKind::User(name) => {
                validate_name(self.label(), name)
            }
        }
    }
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrincipalKind::Node(id) => write!(f, "node/{id}"),
            PrincipalKind::Gateway(name) => write!(f, "gateway/{name}"),
            PrincipalKind::User(name) => write!(f, "user/{name}"),
        }
    }
}

/// A checked identity: which cluster, and who in it. Its text form is the certificate's URI.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal {
    cluster: ClusterName,
    kind: PrincipalKind,
}

impl Principal {
    pub fn new(cluster: ClusterName, kind: PrincipalKind) -> Result<Principal, PrincipalError> {
        kind.validate()?;
        Ok(Principal { cluster, kind })
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    pub fn kind(&self) -> &PrincipalKind {
        &self.kind
    }

    /// The principal named by a certificate (DER), whatever its cluster. Only the URI SANs
    /// with the `fabric` scheme count; there must be exactly one.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<Principal, PrincipalError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PrincipalError::Unparsable(e.to_string()))?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| PrincipalError::Unparsable(e.to_string()))?;
        let uris: Vec<&str> = sans
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) if has_fabric_scheme(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(PrincipalError::NoPrincipalUri),
            [uri] => uri.parse(),
            several => Err(PrincipalError::SeveralPrincipalUris(
                several.iter().map(|u| u.to_string()).collect(),
            )),
        }
    }

    /// The principal of an authenticated peer, from the chain it presented (leaf first), which
    /// must belong to `cluster`. Call only after the chain was verified (the TLS handshake
    /// does that); this reads the identity, it does not check signatures.
    pub fn from_peer_chain(
        chain: &[CertificateDer<'_>],
        cluster: &ClusterName,
    ) -> Result<Principal, PrincipalError> {
        let leaf = chain.first().ok_or(PrincipalError::NoCertificate)?;
        let principal = Principal::from_certificate(leaf)?;
        if principal.cluster != *cluster {
            return Err(PrincipalError::OtherCluster {
                principal: principal.to_string(),
                expected: cluster.clone(),
            });
        }
        Ok(principal)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PRINCIPAL_URI_SCHEME}://{}/{}", self.cluster, self.kind)
    }
}

impl FromStr for Principal {
    type Err = PrincipalError;

    /// Parses exactly `fabric://CLUSTER/KIND/NAME`: no port, user info, query, fragment,
    /// percent-encoding, extra segment or trailing slash, so that one principal has one text.
    fn from_str(uri: &str) -> Result<Principal, PrincipalError> {
        let malformed = || PrincipalError::MalformedUri(uri.to_string());
        let rest = uri
            .strip_prefix(PRINCIPAL_URI_SCHEME)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(malformed)?;
        let mut parts = rest.split('/');
        let (Some(cluster), Some(label), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let cluster = ClusterName::new(cluster)?;
        let kind = PrincipalKind::from_parts(label, name)?;
        Principal::new(cluster, kind)
    }
}

impl serde::Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Whether a URI claims to be a principal (scheme compared without case, as URIs do), so that
/// a malformed one is refused rather than skipped.
fn has_fabric_scheme(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case(PRINCIPAL_URI_SCHEME))
}

/// A node id in canonical decimal: no sign, no leading zero, not 0.
fn parse_node_id(text: &str) -> Result<u64, PrincipalError> {
    let bad = || PrincipalError::InvalidNodeId(text.to_string());
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

/// Gateway and user names: 1 to 64 bytes of lowercase ASCII letters, digits, `.`, `_` and `-`,
/// starting with a letter or digit.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), PrincipalError> {
    let ok = name.len() <= PRINCIPAL_NAME_MAX_BYTES
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PrincipalError::InvalidName {
            kind,
            name: name.to_string(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    #[error(
        "invalid cluster name {0:?}: want 1 to {CLUSTER_NAME_MAX_BYTES} lowercase letters, digits \
         and '-', starting and ending with a letter or digit"
    )]
    InvalidClusterName(String),
    #[error(
        "invalid {kind} name {name:?}: want 1 to {PRINCIPAL_NAME_MAX_BYTES} lowercase letters, \
         digits, '.', '_' and '-', starting with a letter or digit"
    )]
    InvalidName { kind: &'static str, name: String },
    #[error("invalid node id {0:?}: want a decimal number from 1, without leading zeros")]
    InvalidNodeId(String),
    #[error("unknown principal kind {0:?}: want node, gateway or user")]
    UnknownKind(String),
    #[error(
        "malformed principal URI {0:?}: want fabric://CLUSTER/node/ID, fabric://CLUSTER/gateway/NAME or fabric://CLUSTER/user/NAME"
    )]
    MalformedUri(String),
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("certificate names no principal: it has no fabric:// URI subject alternative name")]
    NoPrincipalUri,
    #[error("certificate names several principals ({}); want exactly one fabric:// URI", .0.join(", "))]
    SeveralPrincipalUris(Vec<String>),
    #[error("certificate is for {principal}, of another cluster than {expected}")]
    OtherCluster {
        principal: String,
        expected: ClusterName,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str) -> ClusterName {
        ClusterName::new(name).unwrap()
    }

    #[test]
    fn each_kind_round_trips_through_its_uri() {
        for uri in [
            "fabric://prod/node/3",
            "fabric://prod-eu-1/gateway/hv-07.rack2",
            "fabric://p/user/alice_b",
            "fabric://1/node/18446744073709551615",
        ] {
            let p: Principal = uri.parse().unwrap();
            assert_eq!(p.to_string(), uri);
        }
        let p: Principal = "fabric://prod/node/3".parse().unwrap();
        assert_eq!(p.cluster(), &cluster("prod"));
        assert_eq!(p.kind(), &PrincipalKind::Node(3));
    }

    #[test]
    fn malformed_uris_are_refused_with_the_part_that_is_wrong() {
        for (uri, want) in [
            ("fabric://prod/node", "malformed principal URI"),
            ("fabric://prod/node/3/", "malformed principal URI"),
            ("fabric://prod/node/3/x", "malformed principal URI"),
            ("fabric:prod/node/3", "malformed principal URI"),
            ("https://prod/node/3", "malformed principal URI"),
            ("FABRIC://prod/node/3", "malformed principal URI"),
            ("fabric://Prod/node/3", "invalid cluster name"),
            ("fabric://prod:443/node/3", "invalid cluster name"),
            ("fabric://-prod/node/3", "invalid cluster name"),
            ("fabric:///node/3", "invalid cluster name"),
            ("fabric://prod/node/0", "invalid node id"),
            ("fabric://prod/node/03", "invalid node id"),
            ("fabric://prod/node/+3", "invalid node id"),
            ("fabric://prod/node/18446744073709551616", "invalid node id"),
            ("fabric://prod/host/a", "unknown principal kind"),
            ("fabric://prod/user/Alice", "invalid user name"),
            ("fabric://prod/user/.alice", "invalid user name"),
            ("fabric://prod/user/al%20ice", "invalid user name"),
            ("fabric://prod/user/al?ice", "invalid user name"),
            ("fabric://prod/gateway/", "invalid gateway name"),
        ] {
            let err = uri.parse::<Principal>().unwrap_err().to_string();
            assert!(err.contains(want), "{uri}: {err}");
        }
    }

    #[test]
    fn names_follow_volume_name_rules_and_stricter() {
        assert!(validate_name("user", &"a".repeat(PRINCIPAL_NAME_MAX_BYTES)).is_ok());
        for bad in [
            "",
            "../x",
            "a/b",
            "a b",
            "-a",
            "_a",
            "ä",
            &"a".repeat(PRINCIPAL_NAME_MAX_BYTES + 1),
        ] {
            assert!(validate_name("user", bad).is_err(), "{bad:?}");
        }
        assert!(ClusterName::new(&"c".repeat(CLUSTER_NAME_MAX_BYTES)).is_ok());
        for bad in [
            "",
            "a.b",
            "a_b",
            "a-",
            &"c".repeat(CLUSTER_NAME_MAX_BYTES + 1),
        ] {
            assert!(ClusterName::new(bad).is_err(), "{bad:?}");
        }
    }

    /// A self-signed certificate carrying exactly the given subject alternative names.
    fn cert_with(sans: &[rcgen::SanType]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans.to_vec();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn a_certificate_names_its_principal_by_its_one_fabric_uri() {
        let der = cert_with(&[
            rcgen::SanType::DnsName("node3.example".try_into().unwrap()),
            uri("spiffe://example.org/ns/x"),
            uri("fabric://prod/node/3"),
        ]);
        let p = Principal::from_peer_chain(&[der], &cluster("prod")).unwrap();
        assert_eq!(p.kind(), &PrincipalKind::Node(3));
    }

    #[test]
    fn a_certificate_with_no_or_several_fabric_uris_or_another_clusters_is_refused() {
        let prod = cluster("prod");
        let none = cert_with(&[rcgen::SanType::DnsName("x.example".try_into().unwrap())]);
        assert_eq!(
            Principal::from_peer_chain(&[none], &prod),
            Err(PrincipalError::NoPrincipalUri)
        );
        let two = cert_with(&[uri("fabric://prod/user/a"), uri("fabric://prod/user/b")]);
        assert!(matches!(
            Principal::from_peer_chain(&[two], &prod),
            Err(PrincipalError::SeveralPrincipalUris(u)) if u.len() == 2
        ));
        let other = cert_with(&[uri("fabric://staging/node/3")]);
        let err = Principal::from_peer_chain(&[other], &prod).unwrap_err();
        assert!(matches!(err, PrincipalError::OtherCluster { .. }), "{err}");
        assert!(err.to_string().contains("fabric://staging/node/3"), "{err}");
        // A fabric URI that does not parse is refused, not skipped.
        let bad = cert_with(&[uri("Fabric://prod/node/03")]);
        assert!(Principal::from_peer_chain(&[bad], &prod).is_err());
        assert_eq!(
            Principal::from_peer_chain(&[], &prod),
            Err(PrincipalError::NoCertificate)
        );
        assert!(matches!(
            Principal::from_peer_chain(&[CertificateDer::from(vec![0x30, 0x03])], &prod),
            Err(PrincipalError::Unparsable(_))
        ));
    }
}
