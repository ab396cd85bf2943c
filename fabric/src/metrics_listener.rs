//! The metrics endpoint's listener over mutual TLS: what `axum` serves `/metrics` on when a
//! process with a certificate listens anywhere but loopback. Any certificate of the cluster
//! may scrape (a Prometheus server gets a user certificate of its own); plaintext, another
//! CA's certificate or a revoked one gets nothing. On loopback the endpoint also speaks plain
//! HTTP, for a scraper on the same host, as the gateway's NBD port does for the host's clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::identity::ClusterTls;
use crate::identity::handshake::HANDSHAKE_TIMEOUT_MS;

/// Scrapers' handshakes run at once; a metrics endpoint has few clients.
const HANDSHAKES_IN_FLIGHT_MAX: usize = 16;

/// Connections that completed a mutual TLS handshake, for `axum::serve`.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener`, handshaking with `tls` on tasks of their own so that a slow
    /// client holds up nobody else.
    pub fn new(listener: TcpListener, tls: Arc<ClusterTls>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(HANDSHAKES_IN_FLIGHT_MAX);
        let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let (tcp, remote) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept on the metrics port");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (tx, tls) = (tx.clone(), Arc::clone(&tls));
                tokio::spawn(async move {
                    let _permit = permit;
                    let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
                    match tls.server.accept(tcp, timeout).await {
                        Ok((stream, _principal)) => {
                            let _ = tx.send((stream, remote)).await;
                        }
                        Err(e) => tracing::info!(%remote, error = %e, "metrics connection refused"),
                    }
                });
            }
        });
        Ok(TlsListener { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept task ended with the runtime: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::identity::dev_pki::DevPki;

    #[tokio::test]
    async fn a_scraper_needs_a_certificate_of_the_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::ensure(dir.path()).unwrap();
        let server = Arc::new(ClusterTls::load(&pki.ensure_gateway("gw").unwrap()).unwrap());
        let scraper = ClusterTls::load(&pki.ensure_admin().unwrap()).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app = axum::Router::new().route("/metrics", axum::routing::get(|| async { "up 1\n" }));
        tokio::spawn(axum::serve(TlsListener::new(tcp, server).unwrap(), app).into_future());

        // Plain HTTP gets no HTTP answer.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = plain.read_to_end(&mut got).await;
        assert!(!String::from_utf8_lossy(&got).contains("HTTP/"), "{got:?}");

        // A certificate of the cluster scrapes.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = crate::identity::transport::server_name(&addr.to_string()).unwrap();
        let (mut tls, _) = scraper
            .client
            .connect(tcp, name, Duration::from_secs(5))
            .await
            .unwrap();
        tls.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        tls.read_to_string(&mut body).await.unwrap();
        assert!(
            body.starts_with("HTTP/1.") && body.ends_with("up 1\n"),
            "{body}"
        );
    }
}
