//! Real TLS 1.3 handshakes over loopback TCP between identities the CA issued: who gets in,
//! who is refused and why, and what a reload changes.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, NamedGroup, ProtocolVersion};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::ca::{self, CertificateAuthority};
use super::handshake::HandshakeError;
use super::issue::{LeafRequest, ServerSan};
use super::load::Identity;
use super::principal::{ClusterName, Principal, PrincipalError, PrincipalKind};
use super::tls::{ClientTls, ServerTls, provider};

const TIMEOUT: Duration = Duration::from_secs(10);
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A CA in a temporary directory, issuing identities in memory.
struct TestCa {
    _dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl TestCa {
    fn new(cluster: &str) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterName::new(cluster).unwrap();
        ca::init(dir.path(), &cluster, OffsetDateTime::now_utc()).unwrap();
        let ca = CertificateAuthority::open(dir.path()).unwrap();
        TestCa { _dir: dir, ca }
    }

    fn issue(&self, request: &LeafRequest) -> Identity {
        let leaf = self.ca.issue(request).unwrap();
        Identity::from_pem(
            leaf.chain_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            leaf.ca_pem.as_bytes(),
        )
        .unwrap()
    }

    /// A node serving on 127.0.0.1.
    fn node(&self, id: u64) -> Identity {
        let sans = vec![ServerSan::Ip(LOOPBACK)];
        let now = OffsetDateTime::now_utc();
        self.issue(&LeafRequest::for_days(PrincipalKind::Node(id), sans, now, 1).unwrap())
    }

    fn user(&self, name: &str) -> Identity {
        let kind = PrincipalKind::User(name.into());
        self.issue(&LeafRequest::for_days(kind, vec![], OffsetDateTime::now_utc(), 1).unwrap())
    }

    /// An identity whose validity ended yesterday.
    fn expired(&self, kind: PrincipalKind, sans: Vec<ServerSan>) -> Identity {
        let now = OffsetDateTime::now_utc();
        let mut request = LeafRequest::for_days(kind, sans, now, 1).unwrap();
        request.not_before = now - time::Duration::days(2);
        request.not_after = now - time::Duration::days(1);
        self.issue(&request)
    }

    /// A client chain and key signed by this CA's intermediate with exactly `sans`, bypassing
    /// the issuer's rules (what a CA bug or a hand-made certificate would look like).
    fn raw_client(
        &self,
        sans: Vec<rcgen::SanType>,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.raw_client_signed_by(sans, &self.ca.issuer)
    }

    /// Like [`TestCa::raw_client`], signed by `issuer` and sent with this CA's intermediate.
    fn raw_client_signed_by(
        &self,
        sans: Vec<rcgen::SanType>,
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        let intermediate =
            CertificateDer::from_pem_slice(self.ca.intermediate_pem.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        (vec![cert.der().clone(), intermediate], key)
    }

    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut store = rustls::RootCertStore::empty();
        store
            .add(CertificateDer::from_pem_slice(self.ca.root_pem.as_bytes()).unwrap())
            .unwrap();
        Arc::new(store)
    }
}

/// What one side of a connection learnt: the peer's principal and the leaf it presented.
type Seen = (Principal, CertificateDer<'static>);

/// One connection over loopback TCP: the server accepts and sends "ping", the client answers
/// "pong". Returns what the server and the client each concluded.
async fn connect_once(
    server: &Arc<ServerTls>,
    client: &ClientTls,
) -> (Result<Seen, HandshakeError>, Result<Seen, String>) {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = server.clone();
    let serving = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut tls, principal) = server.accept(tcp, TIMEOUT).await?;
        let conn = tls.get_ref().1;
        assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        let leaf = conn.peer_certificates().unwrap()[0].clone();
        tls.write_all(b"ping").await.map_err(HandshakeError::Io)?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(HandshakeError::Io)?;
        assert_eq!(&buf, b"pong");
        Ok((principal, leaf))
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let server_name = ServerName::IpAddress(LOOPBACK.into());
        let (mut tls, principal) = client
            .connect(tcp, server_name, TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok((principal, leaf))
    };
    let client_result = client_side.await;
    (serving.await.unwrap(), client_result)
}

fn server(id: &Identity) -> Arc<ServerTls> {
    Arc::new(ServerTls::new(id).unwrap())
}

fn client(id: &Identity) -> ClientTls {
    ClientTls::new(id).unwrap()
}

fn is_expired(e: &CertificateError) -> bool {
    matches!(
        e,
        CertificateError::Expired | CertificateError::ExpiredContext { .. }
    )
}

#[tokio::test]
async fn two_issued_identities_handshake_over_tls13_and_each_learns_the_others_principal() {
    let ca = TestCa::new("prod");
    let node = ca.node(1);
    let alice = ca.user("alice");
    let (served, dialled) = connect_once(&server(&node), &client(&alice)).await;
    let (client_principal, client_leaf) = served.unwrap();
    assert_eq!(client_principal.to_string(), "fabric://prod/user/alice");
    assert_eq!(client_leaf, alice.chain()[0]);
    let (server_principal, _) = dialled.unwrap();
    assert_eq!(server_principal.to_string(), "fabric://prod/node/1");
}

#[tokio::test]
async fn the_key_exchange_is_the_post_quantum_hybrid() {
    let ca = TestCa::new("prod");
    let server = server(&ca.node(1));
    let client = client(&ca.user("alice"));
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (tls, _) = server.accept(tcp, TIMEOUT).await.unwrap();
        tls.get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name())
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tls, _) = client
        .connect(tcp, ServerName::IpAddress(LOOPBACK.into()), TIMEOUT)
        .await
        .unwrap();
    tls.shutdown().await.unwrap();
    assert_eq!(serving.await.unwrap(), Some(NamedGroup::X25519MLKEM768));
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let ours = TestCa::new("prod");
    // Same cluster name, another CA: the name proves nothing without the root.
    let theirs = TestCa::new("prod");
    let stranger = theirs.node(1);
    let server = server(&ours.node(1));

    // A stranger that trusts our root gets as far as presenting its certificate.
    let trusting = ClientTls::from_parts(
        stranger.chain().to_vec(),
        stranger.key(),
        ours.roots(),
        ClusterName::new("prod").unwrap(),
    )
    .unwrap();
    let (served, dialled) = connect_once(&server, &trusting).await;
    match served {
        Err(HandshakeError::Certificate(CertificateError::UnknownIssuer)) => {}
        other => panic!("want UnknownIssuer, got {other:?}"),
    }
    assert!(dialled.is_err(), "the server never talks to it");

    // A leaf forged under our intermediate's exact name and key id, by another key.
    let forger = rcgen::Issuer::from_ca_cert_der(
        &CertificateDer::from_pem_slice(ours.ca.intermediate_pem.as_bytes()).unwrap(),
        rcgen::KeyPair::generate().unwrap(),
    )
    .unwrap();
    let (chain, key) = ours.raw_client_signed_by(
        vec![rcgen::SanType::URI(
            "fabric://prod/user/mallory".try_into().unwrap(),
        )],
        &forger,
    );
    let forged =
        ClientTls::from_parts(chain, key, ours.roots(), ClusterName::new("prod").unwrap()).unwrap();
    let (served, _) = connect_once(&server, &forged).await;
    match served {
        Err(HandshakeError::Certificate(CertificateError::BadSignature)) => {}
        other => panic!("want BadSignature, got {other:?}"),
    }

    // One that trusts only its own root refuses our server first.
    let (served, dialled) = connect_once(&server, &client(&stranger)).await;
    assert!(dialled.unwrap_err().contains("UnknownIssuer"));
    assert!(served.is_err());
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let ca = TestCa::new("prod");
    let old = ca.expired(PrincipalKind::User("alice".into()), vec![]);
    let (served, dialled) = connect_once(&server(&ca.node(1)), &client(&old)).await;
    match served {
        Err(HandshakeError::Certificate(e)) if is_expired(&e) => {}
        other => panic!("want an expired certificate, got {other:?}"),
    }
    let err = dialled.unwrap_err();
    assert!(
        err.contains("CertificateExpired") || err.contains("alert"),
        "{err}"
    );
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused_by_the_client() {
    let ca = TestCa::new("prod");
    let old = ca.expired(PrincipalKind::Node(1), vec![ServerSan::Ip(LOOPBACK)]);
    let (served, dialled) = connect_once(&server(&old), &client(&ca.user("alice"))).await;
    let err = dialled.unwrap_err();
    assert!(err.contains("xpired"), "{err}");
    assert!(served.is_err());
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = TestCa::new("prod");
    let server = server(&ca.node(1));
    let anonymous = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(super::tls::PROTOCOL_VERSIONS)
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        server.accept(tcp, TIMEOUT).await.map(|_| ())
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(anonymous));
    if let Ok(mut tls) = connector
        .connect(ServerName::IpAddress(LOOPBACK.into()), tcp)
        .await
    {
        let mut buf = [0u8; 1];
        assert!(
            tls.read_exact(&mut buf).await.is_err(),
            "the server must not talk to it"
        );
    }
    match serving.await.unwrap() {
        Err(HandshakeError::Tls(rustls::Error::NoCertificatesPresented)) => {}
        other => panic!("want NoCertificatesPresented, got {other:?}"),
    }
}

#[tokio::test]
async fn plaintext_grpc_and_nbd_clients_fail_the_handshake_with_a_clear_error() {
    let ca = TestCa::new("prod");
    let server = server(&ca.node(1));
    let grpc_preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An NBD client's first option request (NBD_OPT_GO) after the server's greeting.
    let mut nbd_option = b"IHAVEOPT".to_vec();
    nbd_option.extend_from_slice(&7u32.to_be_bytes());
    nbd_option.extend_from_slice(&0u32.to_be_bytes());
    for bytes in [grpc_preface, nbd_option] {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server.clone();
        let serving = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            server.accept(tcp, TIMEOUT).await.map(|_| ())
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        let err = serving.await.unwrap().unwrap_err();
        assert!(matches!(err, HandshakeError::Plaintext), "{err:?}");
        assert!(err.to_string().contains("spoke plaintext"), "{err}");
        // The plaintext client is answered at most with a TLS alert, then the connection ends.
        let mut answer = Vec::new();
        let read = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the connection is closed, not left hanging");
        assert!(answer.is_empty() || answer[0] == 0x15, "{answer:?}");
    }

    // A plaintext NBD client waits for the server to speak first: it runs into the deadline.
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        server
            .accept(tcp, Duration::from_millis(200))
            .await
            .map(|_| ())
    });
    let _silent = TcpStream::connect(addr).await.unwrap();
    let err = serving.await.unwrap().unwrap_err();
    assert!(matches!(err, HandshakeError::Timeout(200)), "{err:?}");
}

#[tokio::test]
async fn a_certificate_of_this_ca_naming_no_principal_of_this_cluster_is_refused() {
    let ca = TestCa::new("prod");
    let server = server(&ca.node(1));
    let prod = ClusterName::new("prod").unwrap();
    let dns_only = vec![rcgen::SanType::DnsName(
        "client.example".try_into().unwrap(),
    )];
    let staging = vec![rcgen::SanType::URI(
        "fabric://staging/user/mallory".try_into().unwrap(),
    )];
    for (sans, want) in [(dns_only, "NoPrincipalUri"), (staging, "OtherCluster")] {
        let (chain, key) = ca.raw_client(sans);
        let client = ClientTls::from_parts(chain, key, ca.roots(), prod.clone()).unwrap();
        let (served, _) = connect_once(&server, &client).await;
        match served {
            Err(HandshakeError::Principal(
                e @ (PrincipalError::NoPrincipalUri | PrincipalError::OtherCluster { .. }),
            )) => {
                assert!(format!("{e:?}").starts_with(want), "{e:?}");
            }
            other => panic!("want {want}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_reloaded_server_certificate_is_presented_from_the_next_handshake() {
    let ca = TestCa::new("prod");
    let first = ca.node(1);
    let server = server(&first);
    let alice = client(&ca.user("alice"));
    let (_, dialled) = connect_once(&server, &alice).await;
    assert_eq!(dialled.unwrap().1, first.chain()[0]);

    // A connection opened before the reload keeps working after it.
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = server.clone();
    let serving = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut tls, _) = accepting.accept(tcp, TIMEOUT).await.unwrap();
        let mut buf = [0u8; 6];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(&buf).await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut open, _) = alice
        .connect(tcp, ServerName::IpAddress(LOOPBACK.into()), TIMEOUT)
        .await
        .unwrap();

    let second = ca.node(1);
    server
        .reload(second.chain().to_vec(), second.key())
        .unwrap();
    assert_eq!(server.cert().leaf(), second.chain()[0]);

    open.write_all(b"before").await.unwrap();
    let mut echo = [0u8; 6];
    open.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"before");
    serving.await.unwrap();

    let (_, dialled) = connect_once(&server, &alice).await;
    let (principal, leaf) = dialled.unwrap();
    assert_eq!(leaf, second.chain()[0]);
    assert_ne!(leaf, first.chain()[0]);
    assert_eq!(principal.to_string(), "fabric://prod/node/1");

    // A key of another certificate is refused, and the slot keeps what it had.
    let third = ca.node(1);
    assert!(server.reload(third.chain().to_vec(), first.key()).is_err());
    assert_eq!(server.cert().leaf(), second.chain()[0]);
}

#[tokio::test]
async fn a_reloaded_client_certificate_is_presented_from_the_next_handshake() {
    let ca = TestCa::new("prod");
    let server = server(&ca.node(1));
    let client = client(&ca.user("alice"));
    let (served, _) = connect_once(&server, &client).await;
    assert_eq!(served.unwrap().0.to_string(), "fabric://prod/user/alice");
    let bob = ca.user("bob");
    client.reload(bob.chain().to_vec(), bob.key()).unwrap();
    let (served, _) = connect_once(&server, &client).await;
    let (principal, leaf) = served.unwrap();
    assert_eq!(principal.to_string(), "fabric://prod/user/bob");
    assert_eq!(leaf, bob.chain()[0]);
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused_once_the_list_is_in_force() {
    let ca = TestCa::new("prod");
    let server = server(&ca.node(1));
    let alice = ca.user("alice");
    let bob = ca.user("bob");
    let (served, _) = connect_once(&server, &client(&alice)).await;
    assert!(served.is_ok());

    let (_, leaf) = x509_parser::parse_x509_certificate(&alice.chain()[0]).unwrap();
    let now = OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(leaf.raw_serial()),
            revocation_time: now,
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca.ca.issuer)
    .unwrap();
    server
        .trust()
        .update(ca.roots(), vec![crl.der().clone()])
        .unwrap();

    let (served, _) = connect_once(&server, &client(&alice)).await;
    match served {
        Err(HandshakeError::Certificate(CertificateError::Revoked)) => {}
        other => panic!("want Revoked, got {other:?}"),
    }
    let (served, _) = connect_once(&server, &client(&bob)).await;
    assert_eq!(served.unwrap().0.to_string(), "fabric://prod/user/bob");
}
