//! A new node's side of joining with a token (`fabricd node --join ADDR --token T`): make a
//! key, reach a member over TLS that it verifies against the token's pin, redeem the token for
//! a certificate, and write it where the node loads its identity from. See
//! [`crate::identity::join`] for the protocol.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use proto::meta as pb;
use proto::meta::join_client::JoinClient;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::identity::join::{JOIN_ALPN, JoinToken, client_config, key_and_csr, write_joined};
use crate::identity::transport::server_name;
use crate::identity::{Principal, PrincipalKind};

/// How long a join may take, connection and signing included.
pub const JOIN_TIMEOUT_MS: u64 = 30_000;

/// Gets node `id`'s certificate from the member at `member` with `token`, naming
/// `server_names` (the addresses the node is dialled at), and writes it to `cert_dir`.
pub async fn obtain_certificate(
    member: &str,
    token: &JoinToken,
    id: u64,
    server_names: Vec<String>,
    cert_dir: &Path,
) -> anyhow::Result<Principal> {
    tokio::time::timeout(
        Duration::from_millis(JOIN_TIMEOUT_MS),
        join(member, token, id, server_names, cert_dir),
    )
    .await
    .with_context(|| format!("join through {member}: no answer within {JOIN_TIMEOUT_MS} ms"))?
}

/// [`obtain_certificate`] on a runtime of its own, for a caller that has none yet.
pub fn obtain_certificate_blocking(
    member: &str,
    token: &JoinToken,
    id: u64,
    server_names: Vec<String>,
    cert_dir: &Path,
) -> anyhow::Result<Principal> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a runtime to join with")?
        .block_on(obtain_certificate(
            member,
            token,
            id,
            server_names,
            cert_dir,
        ))
}

/// Connects to the member at `member` as a joining node: TLS verified against the root with
/// `pin`, asking for the join protocol. Returns a gRPC channel over that one connection and
/// the member's principal.
pub async fn connect(
    member: &str,
    pin: &str,
) -> anyhow::Result<(tonic::transport::Channel, Principal)> {
    let tcp = TcpStream::connect(member)
        .await
        .with_context(|| format!("connect to {member}"))?;
    let _ = tcp.set_nodelay(true);
    let config = client_config(pin).map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = server_name(member)?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
            let reason = match inner {
                Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))) => {
                    o.0.to_string()
                }
                _ => e.to_string(),
            };
            anyhow::anyhow!("TLS to {member}: {reason}")
        })?;
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(JOIN_ALPN) {
        bail!("{member} does not take joins (it is not a metadata member of this version)");
    }
    let server = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(Principal::from_certificate)
        .transpose()?
        .context("the member presented no certificate")?;
    if !matches!(server.kind(), PrincipalKind::Node(_)) {
        bail!("{member} is {server}, not a node");
    }
    // tonic over the one connection just verified.
    let stream = Arc::new(Mutex::new(Some(TokioIo::new(tls))));
    let channel = tonic::transport::Endpoint::from_static("http://joining.node")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let taken = stream.lock().expect("join stream").take();
            async move {
                taken.ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the join connection closed",
                    )
                })
            }
        }))
        .await
        .with_context(|| format!("gRPC to {member}"))?;
    Ok((channel, server))
}

async fn join(
    member: &str,
    token: &JoinToken,
    id: u64,
    server_names: Vec<String>,
    cert_dir: &Path,
) -> anyhow::Result<Principal> {
    let (channel, server) = connect(member, token.pin()).await?;
    let expected = Principal::new(server.cluster().clone(), PrincipalKind::Node(id))?;
    let (key, csr) = key_and_csr()?;
    let reply = JoinClient::new(channel)
        .join(pb::JoinRequest {
            token_id: token.id().to_owned(),
            secret: token.secret().to_vec(),
            node_id: id,
            csr,
            server_names,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{member} refused the join: {}", s.message()))?
        .into_inner();
    let principal = write_joined(
        cert_dir,
        token,
        &expected,
        &reply.chain_pem,
        &key.serialize_pem(),
        &reply.ca_pem,
    )?;
    tracing::info!(%principal, dir = %cert_dir.display(), "joined: certificate written");
    Ok(principal)
}
