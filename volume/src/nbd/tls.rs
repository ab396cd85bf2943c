//! STARTTLS: the server's TLS policy ([`NbdTls`]) and the upgrade of one connection to TLS
//! once `NBD_OPT_STARTTLS` has been acknowledged.
//!
//! Trust belongs to the caller: the `rustls::ServerConfig` (the server's certificate, whether
//! and how client certificates are verified) is built by whoever builds the server. This
//! module runs the handshake on the connection's socket, bounded in time, and hands the
//! verified client chain on, so the export seam can authorize the client.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Time a client has for the TLS handshake after `NBD_OPT_STARTTLS` was acknowledged, in
/// milliseconds. A handshake is a few round trips; a client that stalls in it holds a
/// connection slot for nothing.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// What a client is told when it asks for anything but TLS from a server that requires it
/// (`NBD_REP_ERR_TLS_REQD`): that, and how to connect instead.
pub const TLS_REQUIRED_MESSAGE: &str = "this server requires TLS: connect with nbds:// (libnbd) \
     or --object tls-creds-x509 and tls-creds= (QEMU)";

/// Whether and how a server speaks TLS, in the terms of the NBD document's server modes.
#[derive(Debug, Clone, Default)]
pub enum NbdTls {
    /// NOTLS: `NBD_OPT_STARTTLS` is refused with `NBD_REP_ERR_POLICY`.
    #[default]
    Off,
    /// SELECTIVETLS with no TLS-only export: a client may start TLS or stay in plaintext.
    Optional(Arc<ServerConfig>),
    /// FORCEDTLS: every option but `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` is refused with
    /// `NBD_REP_ERR_TLS_REQD` until TLS is up.
    Required(Arc<ServerConfig>),
}

impl NbdTls {
    /// The configuration a STARTTLS runs with, unless TLS is off.
    pub fn config(&self) -> Option<&Arc<ServerConfig>> {
        match self {
            NbdTls::Off => None,
            NbdTls::Optional(config) | NbdTls::Required(config) => Some(config),
        }
    }

    pub fn required(&self) -> bool {
        matches!(self, NbdTls::Required(_))
    }
}

/// Why a connection's TLS handshake failed; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS handshake not finished within {TLS_HANDSHAKE_TIMEOUT_MS} ms")]
    Timeout,
    #[error("TLS handshake failed: {reason} ({source})")]
    Handshake {
        /// What most likely went wrong, in words an operator acts on.
        reason: &'static str,
        source: io::Error,
    },
}

/// The read half of a connection after STARTTLS.
pub type TlsReader<R, W> = ReadHalf<TlsStream<Duplex<R, W>>>;
/// The write half of a connection after STARTTLS.
pub type TlsWriter<R, W> = WriteHalf<TlsStream<Duplex<R, W>>>;

/// A connection upgraded to TLS: its halves and the client's verified certificate chain
/// (leaf first; empty if the configuration admitted the client without one).
pub struct Upgraded<R, W> {
    pub reader: TlsReader<R, W>,
    pub writer: TlsWriter<R, W>,
    pub certificates: Vec<CertificateDer<'static>>,
}

/// Runs the server side of the TLS handshake on the connection's reader and writer (the
/// reader with whatever it had already buffered), within [`TLS_HANDSHAKE_TIMEOUT_MS`].
pub async fn upgrade<R, W>(
    config: Arc<ServerConfig>,
    r: R,
    w: W,
) -> Result<Upgraded<R, W>, TlsError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let accept = TlsAcceptor::from(config).accept(Duplex { r, w });
    let stream = tokio::time::timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS), accept)
        .await
        .map_err(|_elapsed| TlsError::Timeout)?
        .map_err(|source| TlsError::Handshake {
            reason: failure_reason(&source),
            source,
        })?;
    let certificates = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(<[CertificateDer<'static>]>::to_vec)
        .unwrap_or_default();
    // Reads and replies run on separate tasks; the TLS state between them is shared.
    let (reader, writer) = tokio::io::split(stream);
    Ok(Upgraded {
        reader,
        writer,
        certificates,
    })
}

/// The likely cause of a failed handshake, for the log line that closes the connection.
fn failure_reason(e: &io::Error) -> &'static str {
    let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => "the client closed the connection mid-handshake",
            _ => "socket error",
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "the client presented no certificate",
        // A bad signature is what a CA with a trusted CA's name but another key yields.
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "the client's certificate is not from a CA this server trusts",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the client's certificate has expired",
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
            "the client's certificate is revoked"
        }
        rustls::Error::InvalidCertificate(_) => "the client's certificate is not acceptable",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the client did not speak TLS after STARTTLS (plaintext?)"
        }
        rustls::Error::AlertReceived(_) => {
            "the client gave up the handshake (does it trust this server's certificate?)"
        }
        rustls::Error::PeerIncompatible(_) => "no TLS version or algorithm in common",
        _ => "TLS error",
    }
}

/// A connection's reader and writer as one stream again, which the TLS layer needs. The
/// reader is the handshake's buffered one, so bytes it had read past the STARTTLS option
/// (a client's ClientHello sent right behind it) reach TLS rather than being lost.
pub struct Duplex<R, W> {
    r: R,
    w: W,
}

impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for Duplex<R, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().r).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for Duplex<R, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().w).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().w).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.w.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().w).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().w).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::AsyncWriteExt;

    /// A self-signed certificate for `name` and its key.
    fn self_signed(name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let key = PrivatePkcs8KeyDer::from(c.signing_key.serialize_der());
        (c.cert.der().clone(), key.into())
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn roots(cert: &CertificateDer<'static>) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        Arc::new(roots)
    }

    /// A server that requires a client certificate signed by `client_ca`.
    fn server(client_ca: &CertificateDer<'static>) -> (Arc<ServerConfig>, CertificateDer<'static>) {
        let (cert, key) = self_signed("localhost");
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_ca), provider())
            .build()
            .unwrap();
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        (Arc::new(config), cert)
    }

    /// The reason the server gives when a client with `client` (or none) connects.
    async fn refusal(client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>) -> String {
        let (ca, _) = self_signed("client CA");
        let (config, server_cert) = server(&ca);
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&server_cert));
        let client_config = match client {
            Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        let (near, far) = tokio::io::duplex(64 * 1024);
        let connect = async move {
            let name = ServerName::try_from("localhost").unwrap();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
            // With TLS 1.3 the client may finish before the server refuses it.
            if let Ok(mut tls) = connector.connect(name, far).await {
                let _ = tls.write_all(b"x").await;
                let _ = tls.flush().await;
            }
        };
        let (r, w) = tokio::io::split(near);
        let (upgraded, ()) = tokio::join!(upgrade(config, r, w), connect);
        match upgraded {
            Ok(_) => panic!("the handshake succeeded"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused_and_the_log_says_so() {
        let why = refusal(None).await;
        assert!(why.contains("presented no certificate"), "{why}");
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_is_refused_and_the_log_says_so() {
        let why = refusal(Some(self_signed("client"))).await;
        assert!(why.contains("not from a CA this server trusts"), "{why}");
    }

    #[tokio::test]
    async fn plaintext_after_starttls_is_refused_and_the_log_says_so() {
        let (ca, _) = self_signed("client CA");
        let (config, _) = server(&ca);
        let (near, mut far) = tokio::io::duplex(4096);
        far.write_all(b"IHAVEOPT\0\0\0\x07\0\0\0\0").await.unwrap();
        let (r, w) = tokio::io::split(near);
        let Err(why) = upgrade(config, r, w).await else {
            panic!("plaintext passed for TLS");
        };
        assert!(why.to_string().contains("did not speak TLS"), "{why}");
    }
}
