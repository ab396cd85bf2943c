//! `NBD_OPT_STARTTLS`: the server's TLS modes against a raw protocol client written here, and
//! against QEMU (`qemu-img`, `qemu-io`) and libnbd (`nbdinfo`, `nbdcopy`) when installed.
//!
//! Each test makes its own certificate authority with rcgen in a directory laid out as QEMU's
//! `tls-creds-x509` and libnbd's `tls-certificates` expect it (`ca-cert.pem`,
//! `server-cert.pem`, `server-key.pem`, `client-cert.pem`, `client-key.pem`), and builds the
//! server's rustls configuration from those files: TLS 1.3, client certificates required and
//! verified against that CA. The served exports record the client certificate each open
//! was given, which is how the tests see what reaches the export seam.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use volume::nbd::proto::*;
use volume::nbd::{
    Described, ExportError, Exports, Listed, NbdConfig, NbdServer, NbdTls, Opened, Peer,
    TLS_REQUIRED_MESSAGE,
};
use volume::volume::VolFuture;
use volume::{BlockVolume, Extent, ExtentState, VolumeError, ZeroFlags};

const SIZE: u64 = 4 << 20;
const MAX_IO: u32 = 1 << 20;
const EXPORT: &str = "secure";
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

// ---- Certificates ------------------------------------------------------------------------

/// A certificate authority: its certificate and what signs with its key.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // gnutls (QEMU's sanity check) wants a CA that may sign certificates.
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `purpose`: its certificate, DER and PEM, and its key in PEM.
    fn issue(
        &self,
        name: &str,
        sans: Vec<SanType>,
        purpose: ExtendedKeyUsagePurpose,
    ) -> (CertificateDer<'static>, String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![purpose];
        // No key usage extension: gnutls then allows any, where a critical one lacking key
        // encipherment (meaningless for ECDSA) would make QEMU refuse the certificate.
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.der().clone(), cert.pem(), key.serialize_pem())
    }
}

/// The certificate directories of one test.
struct Pki {
    _root: tempfile::TempDir,
    /// Everything, in the gnutls layout: the CA, the server's and a good client's pair.
    dir: PathBuf,
    /// Trusts the CA but holds no client certificate.
    no_client_cert: PathBuf,
    /// A client certificate from another CA (both CAs trusted here, so the client itself
    /// has no objection to its own certificate; the server must refuse it).
    foreign: PathBuf,
    /// The good client's certificate, as the export seam must see it.
    client_der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let root = tempfile::tempdir().unwrap();
        let ca = Ca::new("nbd test CA");
        let (_, server_pem, server_key) = ca.issue(
            "nbd test server",
            vec![
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                SanType::DnsName("localhost".try_into().unwrap()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_der, client_pem, client_key) =
            ca.issue("client-a", vec![], ExtendedKeyUsagePurpose::ClientAuth);
        let dir = root.path().join("pki");
        write_files(
            &dir,
            &[
                ("ca-cert.pem", &ca.pem),
                ("server-cert.pem", &server_pem),
                ("server-key.pem", &server_key),
                ("client-cert.pem", &client_pem),
                ("client-key.pem", &client_key),
            ],
        );
        let no_client_cert = root.path().join("no-client-cert");
        write_files(&no_client_cert, &[("ca-cert.pem", &ca.pem)]);
        let other = Ca::new("another CA");
        let (_, foreign_pem, foreign_key) =
            other.issue("client-b", vec![], ExtendedKeyUsagePurpose::ClientAuth);
        let foreign = root.path().join("foreign");
        write_files(
            &foreign,
            &[
                ("ca-cert.pem", &format!("{}{}", ca.pem, other.pem)),
                ("client-cert.pem", &foreign_pem),
                ("client-key.pem", &foreign_key),
            ],
        );
        Pki {
            _root: root,
            dir,
            no_client_cert,
            foreign,
            client_der,
        }
    }

    /// The server's configuration, from the directory's files: TLS 1.3 only, a client
    /// certificate from the CA required.
    fn server_config(&self) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in certs(&self.dir.join("ca-cert.pem")) {
            roots.add(ca).unwrap();
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .unwrap();
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs(&self.dir.join("server-cert.pem")),
                PrivateKeyDer::from_pem_file(self.dir.join("server-key.pem")).unwrap(),
            )
            .unwrap();
        Arc::new(config)
    }

    /// A rustls client trusting `dir`'s CAs, with `dir`'s client certificate if it has one.
    fn client_config(dir: &Path) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in certs(&dir.join("ca-cert.pem")) {
            roots.add(ca).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let config = if dir.join("client-cert.pem").exists() {
            builder
                .with_client_auth_cert(
                    certs(&dir.join("client-cert.pem")),
                    PrivateKeyDer::from_pem_file(dir.join("client-key.pem")).unwrap(),
                )
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }
}

fn write_files(dir: &Path, files: &[(&str, &String)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

// ---- An export that records who opened it ------------------------------------------------

/// A 4 MiB in-memory volume; block status reports it all as data.
struct Mem {
    data: Mutex<Vec<u8>>,
}

fn in_range(offset: u64, len: u64) -> Result<(), VolumeError> {
    match offset.checked_add(len) {
        Some(end) if end <= SIZE => Ok(()),
        _ => Err(VolumeError::OutOfRange {
            offset,
            len,
            size: SIZE,
        }),
    }
}

impl BlockVolume for Mem {
    fn name(&self) -> &str {
        EXPORT
    }
    fn size(&self) -> u64 {
        SIZE
    }
    fn max_io_bytes(&self) -> u32 {
        MAX_IO
    }
    fn read(&self, offset: u64, len: u32) -> VolFuture<Bytes> {
        let r = in_range(offset, u64::from(len)).map(|()| {
            let d = self.data.lock().unwrap();
            Bytes::copy_from_slice(&d[offset as usize..offset as usize + len as usize])
        });
        Box::pin(std::future::ready(r))
    }
    fn write(&self, offset: u64, data: Bytes, _fua: bool) -> VolFuture<()> {
        let r = in_range(offset, data.len() as u64).map(|()| {
            self.data.lock().unwrap()[offset as usize..offset as usize + data.len()]
                .copy_from_slice(&data);
        });
        Box::pin(std::future::ready(r))
    }
    fn flush(&self) -> VolFuture<()> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn trim(&self, offset: u64, len: u64, _fua: bool) -> VolFuture<()> {
        self.write_zeroes(offset, len, ZeroFlags::default())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> VolFuture<()> {
        let r = in_range(offset, len).map(|()| {
            self.data.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0);
        });
        Box::pin(std::future::ready(r))
    }
    fn block_status(&self, offset: u64, len: u64) -> VolFuture<Vec<Extent>> {
        let r = in_range(offset, len).map(|()| {
            vec![Extent {
                len,
                state: ExtentState {
                    hole: false,
                    zero: false,
                },
            }]
        });
        Box::pin(std::future::ready(r))
    }
}

/// One export, open to anyone; every call records the peer it was made for.
struct Recording {
    volume: Arc<Mem>,
    /// The peer of each open, in order.
    opens: Mutex<Vec<Peer>>,
    /// The peer of each list or describe.
    looks: Mutex<Vec<Peer>>,
}

impl Recording {
    fn described(&self) -> Described {
        Described::volume(self.volume.as_ref(), MAX_IO)
    }

    fn find(&self, name: &str) -> Result<(), ExportError> {
        match name {
            EXPORT => Ok(()),
            _ => Err(ExportError::Unavailable(format!(
                "no export named {name:?}"
            ))),
        }
    }

    fn opens(&self) -> Vec<Peer> {
        self.opens.lock().unwrap().clone()
    }
}

impl Exports for Recording {
    fn default_name(&self) -> Option<String> {
        Some(EXPORT.into())
    }

    fn list<'a>(&'a self, peer: &'a Peer) -> BoxFuture<'a, Result<Vec<Listed>, ExportError>> {
        self.looks.lock().unwrap().push(peer.clone());
        let d = self.described();
        Box::pin(std::future::ready(Ok(vec![Listed {
            name: d.name,
            description: d.description,
        }])))
    }

    fn describe<'a>(
        &'a self,
        peer: &'a Peer,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Described, ExportError>> {
        self.looks.lock().unwrap().push(peer.clone());
        Box::pin(std::future::ready(
            self.find(name).map(|()| self.described()),
        ))
    }

    fn open<'a>(
        &'a self,
        peer: &'a Peer,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Opened, ExportError>> {
        let opened = self.find(name).map(|()| {
            self.opens.lock().unwrap().push(peer.clone());
            Opened {
                export: self.described(),
                volume: Arc::clone(&self.volume) as Arc<dyn BlockVolume>,
                lease: None,
            }
        });
        Box::pin(std::future::ready(opened))
    }
}

/// A running server; it stops when dropped.
struct Running {
    addr: SocketAddr,
    exports: Arc<Recording>,
    _stop: watch::Sender<bool>,
}

async fn serve(tls: NbdTls) -> Running {
    let exports = Arc::new(Recording {
        volume: Arc::new(Mem {
            data: Mutex::new(vec![0; SIZE as usize]),
        }),
        opens: Mutex::new(Vec::new()),
        looks: Mutex::new(Vec::new()),
    });
    let server = NbdServer::with_exports(
        Arc::clone(&exports) as Arc<dyn Exports>,
        NbdConfig::default(),
    )
    .unwrap()
    .with_tls(tls);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(Arc::new(server).serve_tcp(listener, stopped));
    Running {
        addr,
        exports,
        _stop: stop,
    }
}

// ---- A raw protocol client ---------------------------------------------------------------

/// Connects, reads the greeting and sends fixed newstyle flags.
async fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; GREETING_BYTES];
    s.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting[8..16], &NBD_OPTS_MAGIC.to_be_bytes());
    s.write_all(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes())
        .await
        .unwrap();
    s
}

async fn send_option<S: AsyncWrite + Unpin>(s: &mut S, option: u32, data: &[u8]) {
    let mut buf = BytesMut::new();
    OptionHeader {
        option,
        len: data.len() as u32,
    }
    .encode(&mut buf);
    buf.extend_from_slice(data);
    s.write_all(&buf).await.unwrap();
}

/// Sends an option and collects its replies, `(type, data)`, up to the final one.
async fn option<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    data: &[u8],
) -> Vec<(u32, Vec<u8>)> {
    send_option(s, option, data).await;
    let mut replies = Vec::new();
    loop {
        let mut h = [0u8; OPTION_REPLY_HEADER_BYTES];
        tokio::time::timeout(REPLY_TIMEOUT, s.read_exact(&mut h))
            .await
            .expect("no option reply")
            .unwrap();
        assert_eq!(&h[..8], &NBD_REP_MAGIC.to_be_bytes());
        assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), option);
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut data = vec![0; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        s.read_exact(&mut data).await.unwrap();
        let last = kind == NBD_REP_ACK || kind & NBD_REP_FLAG_ERROR != 0;
        replies.push((kind, data));
        if last {
            return replies;
        }
    }
}

fn go_data(export: &str) -> Vec<u8> {
    let mut v = (export.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&0u16.to_be_bytes());
    v
}

/// `NBD_OPT_STARTTLS`, acknowledged, then the TLS handshake as `dir`'s client.
async fn start_tls(
    mut s: TcpStream,
    dir: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let ack = option(&mut s, NBD_OPT_STARTTLS, &[]).await;
    assert_eq!(ack, vec![(NBD_REP_ACK, vec![])]);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(Pki::client_config(dir))
        .connect(name, s)
        .await
}

/// GO on the export, then a write and a read back with simple replies.
async fn go_write_read<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> Vec<u8> {
    let go = option(s, NBD_OPT_GO, &go_data(EXPORT)).await;
    assert_eq!(go.last().unwrap().0, NBD_REP_ACK, "{go:?}");
    let request = |command, cookie, len: u32| {
        let mut buf = BytesMut::new();
        RequestHeader {
            flags: 0,
            command,
            cookie,
            offset: 4096,
            len,
        }
        .encode(&mut buf);
        buf
    };
    let mut write = request(NBD_CMD_WRITE, 1, data.len() as u32);
    write.extend_from_slice(data);
    s.write_all(&write).await.unwrap();
    s.write_all(&request(NBD_CMD_READ, 2, data.len() as u32))
        .await
        .unwrap();
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(
        &reply[..8],
        &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0],
        "write ok"
    );
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(
        &reply[..8],
        &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0],
        "read ok"
    );
    let mut back = vec![0; data.len()];
    s.read_exact(&mut back).await.unwrap();
    back
}

/// Whether the server closes the connection (after whatever it still had to send).
async fn closed<S: AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(REPLY_TIMEOUT, s.read_to_end(&mut rest)).await {
        Ok(_) => true,
        Err(_elapsed) => false,
    }
}

// ---- The modes, with the raw client -------------------------------------------------------

#[tokio::test]
async fn required_tls_refuses_everything_but_starttls_then_serves_over_tls() {
    let pki = Pki::new();
    let srv = serve(NbdTls::Required(pki.server_config())).await;

    // Before TLS: options are refused with a message saying how to connect; STARTTLS with
    // data is invalid; ABORT is still answered.
    let mut s = connect(srv.addr).await;
    for (opt, data) in [
        (NBD_OPT_GO, go_data(EXPORT)),
        (NBD_OPT_INFO, go_data(EXPORT)),
        (NBD_OPT_LIST, vec![]),
        (NBD_OPT_STRUCTURED_REPLY, vec![]),
        (0x7777, b"unknown".to_vec()),
    ] {
        let refused = option(&mut s, opt, &data).await;
        assert_eq!(refused.len(), 1, "option {opt}: {refused:?}");
        assert_eq!(refused[0].0, NBD_REP_ERR_TLS_REQD, "option {opt}");
        assert_eq!(refused[0].1, TLS_REQUIRED_MESSAGE.as_bytes());
    }
    assert!(TLS_REQUIRED_MESSAGE.contains("nbds://"));
    assert!(TLS_REQUIRED_MESSAGE.contains("tls-creds-x509"));
    assert_eq!(
        option(&mut s, NBD_OPT_STARTTLS, b"x").await[0].0,
        NBD_REP_ERR_INVALID
    );
    assert_eq!(
        option(&mut s, NBD_OPT_ABORT, &[]).await,
        vec![(NBD_REP_ACK, vec![])]
    );
    assert!(closed(&mut s).await);
    assert!(
        srv.exports.looks.lock().unwrap().is_empty(),
        "nothing leaked"
    );

    // EXPORT_NAME cannot be refused, so it closes the connection.
    let mut s = connect(srv.addr).await;
    send_option(&mut s, NBD_OPT_EXPORT_NAME, EXPORT.as_bytes()).await;
    assert!(closed(&mut s).await);

    // STARTTLS, then haggling over TLS: a second STARTTLS is invalid, TLS_REQD is never sent
    // again, and the export sees the client's certificate.
    let mut t = start_tls(connect(srv.addr).await, &pki.dir).await.unwrap();
    assert_eq!(
        option(&mut t, NBD_OPT_STARTTLS, &[]).await[0].0,
        NBD_REP_ERR_INVALID
    );
    let list = option(&mut t, NBD_OPT_LIST, &[]).await;
    assert_eq!(list[0].0, NBD_REP_SERVER);
    assert_eq!(go_write_read(&mut t, b"over tls").await, b"over tls");
    let opens = srv.exports.opens();
    assert_eq!(opens.len(), 1);
    assert!(opens[0].tls);
    assert_eq!(opens[0].leaf(), Some(&pki.client_der));
    assert!(opens[0].address.starts_with("127.0.0.1:"));
}

#[tokio::test]
async fn optional_tls_serves_plaintext_and_tls_clients_alike() {
    let pki = Pki::new();
    let srv = serve(NbdTls::Optional(pki.server_config())).await;

    let mut plain = connect(srv.addr).await;
    assert_eq!(go_write_read(&mut plain, b"plain").await, b"plain");
    let mut t = start_tls(connect(srv.addr).await, &pki.dir).await.unwrap();
    assert_eq!(go_write_read(&mut t, b"secret").await, b"secret");

    let opens = srv.exports.opens();
    assert_eq!(opens.len(), 2);
    assert!(!opens[0].tls);
    assert_eq!(opens[0].leaf(), None);
    assert!(opens[1].tls);
    assert_eq!(opens[1].leaf(), Some(&pki.client_der));
}

#[tokio::test]
async fn structured_replies_negotiated_in_plaintext_are_forgotten_after_starttls() {
    let pki = Pki::new();
    let srv = serve(NbdTls::Optional(pki.server_config())).await;
    let mut s = connect(srv.addr).await;
    assert_eq!(
        option(&mut s, NBD_OPT_STRUCTURED_REPLY, &[]).await[0].0,
        NBD_REP_ACK
    );
    let mut t = start_tls(s, &pki.dir).await.unwrap();
    // Simple replies again: the helper reads simple replies only.
    assert_eq!(go_write_read(&mut t, b"simple").await, b"simple");
}

#[tokio::test]
async fn a_failed_tls_handshake_closes_only_that_connection() {
    let pki = Pki::new();
    let srv = serve(NbdTls::Required(pki.server_config())).await;

    // Plaintext after the acknowledgement is not a TLS handshake.
    let mut s = connect(srv.addr).await;
    assert_eq!(
        option(&mut s, NBD_OPT_STARTTLS, &[]).await[0].0,
        NBD_REP_ACK
    );
    send_option(&mut s, NBD_OPT_GO, &go_data(EXPORT)).await;
    assert!(closed(&mut s).await);

    // No client certificate, or one from another CA: refused at the handshake. With TLS 1.3
    // the client learns it on its first read.
    for dir in [&pki.no_client_cert, &pki.foreign] {
        let refused = match start_tls(connect(srv.addr).await, dir).await {
            Err(_) => true,
            Ok(mut t) => {
                send_option(&mut t, NBD_OPT_LIST, &[]).await;
                let mut byte = [0u8; 1];
                !matches!(
                    tokio::time::timeout(REPLY_TIMEOUT, t.read(&mut byte)).await,
                    Ok(Ok(1))
                )
            }
        };
        assert!(refused, "{} got in", dir.display());
    }
    assert!(srv.exports.looks.lock().unwrap().is_empty());

    // The server still serves a good client.
    let mut t = start_tls(connect(srv.addr).await, &pki.dir).await.unwrap();
    assert_eq!(go_write_read(&mut t, b"still here").await, b"still here");
    assert_eq!(srv.exports.opens().len(), 1);
}

// ---- Real clients ------------------------------------------------------------------------

/// Runs a tool; returns whether it succeeded, and its stdout and stderr.
async fn run(tool: &str, args: &[&str]) -> (bool, String, String) {
    run_with(tool, args, &[]).await
}

/// [`run`] with environment variables set.
async fn run_with(tool: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        TOOL_TIMEOUT,
        tokio::process::Command::new(tool)
            .args(args)
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{tool} {args:?} timed out"))
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn run_ok(tool: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = run(tool, args).await;
    assert!(ok, "{tool} {args:?} failed: {stdout}\n{stderr}");
    stdout
}

/// QEMU's TLS object and image options for the export, with certificates from `dir`.
fn qemu_args(srv: &Running, dir: &Path) -> (String, String) {
    (
        format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            dir.display()
        ),
        format!(
            "driver=nbd,host=127.0.0.1,port={},export={EXPORT},tls-creds=tls0",
            srv.addr.port()
        ),
    )
}

fn nbds_url(srv: &Running, dir: &Path) -> String {
    format!(
        "nbds://127.0.0.1:{}/{EXPORT}?tls-certificates={}",
        srv.addr.port(),
        dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_speaks_tls_with_its_client_certificate_and_is_refused_without_one() {
    if fabric_suite::tools(&["qemu-img", "qemu-io"]).is_none() {
        return;
    }
    let pki = Pki::new();
    let srv = serve(NbdTls::Required(pki.server_config())).await;

    let (object, image) = qemu_args(&srv, &pki.dir);
    let info = run_ok(
        "qemu-img",
        &[
            "info",
            "--output=json",
            "--object",
            &object,
            "--image-opts",
            &image,
        ],
    )
    .await;
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"], SIZE);

    let io = run_ok(
        "qemu-io",
        &[
            "--object",
            &object,
            "--image-opts",
            &image,
            "-c",
            "write -P 0xab 0 64k",
            "-c",
            "read -P 0xab 0 64k",
        ],
    )
    .await;
    assert!(!io.contains("Pattern verification failed"), "{io}");
    assert!(
        srv.exports.volume.data.lock().unwrap()[..64 << 10]
            .iter()
            .all(|&b| b == 0xab)
    );
    let opens = srv.exports.opens();
    assert!(!opens.is_empty());
    assert!(
        opens
            .iter()
            .all(|p| p.tls && p.leaf() == Some(&pki.client_der))
    );

    for dir in [&pki.no_client_cert, &pki.foreign] {
        let (object, image) = qemu_args(&srv, dir);
        let (ok, _, stderr) = run(
            "qemu-img",
            &["info", "--object", &object, "--image-opts", &image],
        )
        .await;
        assert!(!ok, "qemu-img got in with {}", dir.display());
        assert!(!stderr.is_empty());
    }
    assert_eq!(srv.exports.opens().len(), opens.len(), "no further opens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnbd_speaks_tls_and_a_plaintext_client_is_told_to_use_it() {
    if fabric_suite::tools(&["nbdinfo", "nbdcopy"]).is_none() {
        return;
    }
    let pki = Pki::new();
    let srv = serve(NbdTls::Required(pki.server_config())).await;
    let url = nbds_url(&srv, &pki.dir);

    let json: serde_json::Value =
        serde_json::from_str(&run_ok("nbdinfo", &["--json", &url]).await).unwrap();
    assert_eq!(json["TLS"], true, "{json}");
    assert_eq!(json["exports"][0]["export-size"], SIZE);

    // A round trip of a small image through the export, over TLS.
    let tmp = tempfile::tempdir().unwrap();
    let (src, back) = (tmp.path().join("src.img"), tmp.path().join("back.img"));
    let image: Vec<u8> = (0..SIZE as usize).map(|i| (i / 4096) as u8).collect();
    std::fs::write(&src, &image).unwrap();
    run_ok("nbdcopy", &[src.to_str().unwrap(), &url]).await;
    run_ok("nbdcopy", &[&url, back.to_str().unwrap()]).await;
    assert!(
        std::fs::read(&back).unwrap() == image,
        "the image reads back"
    );
    let opens = srv.exports.opens();
    assert!(opens.len() >= 3);
    assert!(
        opens
            .iter()
            .all(|p| p.tls && p.leaf() == Some(&pki.client_der))
    );

    // Plaintext: refused, and the refusal says how to connect. libnbd (1.14) reports the
    // server's message in its debug output, and only `ENOTSUP` in its error line.
    let plain = format!("nbd://127.0.0.1:{}/{EXPORT}", srv.addr.port());
    let (ok, stdout, stderr) = run_with("nbdinfo", &[&plain], &[("LIBNBD_DEBUG", "1")]).await;
    assert!(!ok, "plaintext nbdinfo got in: {stdout}");
    assert!(stderr.contains(TLS_REQUIRED_MESSAGE), "{stderr}");

    for dir in [&pki.no_client_cert, &pki.foreign] {
        let (ok, stdout, _) = run("nbdinfo", &[&nbds_url(&srv, dir)]).await;
        assert!(!ok, "nbdinfo got in with {}: {stdout}", dir.display());
    }
    assert_eq!(srv.exports.opens().len(), opens.len(), "no further opens");
}
