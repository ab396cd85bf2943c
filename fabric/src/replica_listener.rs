//! The replica port of a storage node over mutual TLS: each accepted connection completes a
//! TLS 1.3 handshake (bounded in time, a slot of [`HANDSHAKES_IN_FLIGHT_MAX`]) and must prove a
//! node or gateway principal of the cluster — the only callers of the replica wire — before
//! the replica server reads a frame of it. Users' certificates are refused here: people reach
//! volumes through a gateway. A connection whose certificate the cluster revokes is cut.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use volume::replica::ReplicaServer;

use crate::identity::revocation::peer_serial;
use crate::identity::{ClusterTls, Principal, PrincipalKind};

/// Handshakes the replica port runs at once.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_RETRY_DELAY_MS: u64 = 100;

/// Whether `principal` may speak the replica wire.
pub fn may_use_replica_port(principal: &Principal) -> bool {
    matches!(
        principal.kind(),
        PrincipalKind::Node(_) | PrincipalKind::Gateway(_)
    )
}

/// Serves `server` to TLS clients on `listener` until `shutdown`; connections then finish
/// what they read and close.
pub async fn serve(
    server: Arc<ReplicaServer>,
    listener: TcpListener,
    tls: Arc<ClusterTls>,
    shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    let mut connections = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        let permit = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
        };
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the replica port");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_DELAY_MS)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (server, tls, stop) = (Arc::clone(&server), Arc::clone(&tls), shutdown.clone());
        connections.spawn(async move {
            let handshake = tls
                .server
                .accept(tcp, Duration::from_millis(crate::identity::handshake::HANDSHAKE_TIMEOUT_MS))
                .await;
            drop(permit);
            let (stream, principal) = match handshake {
                Ok(done) => done,
                Err(e) => {
                    tracing::info!(%remote, error = %e, "replica connection refused");
                    return;
                }
            };
            if !may_use_replica_port(&principal) {
                tracing::warn!(%remote, %principal, "replica connection refused: only nodes and gateways speak the replica wire");
                return;
            }
            // A connection whose certificate is revoked while it is open is cut.
            let serial = peer_serial(stream.get_ref().1);
            let revocations = Arc::clone(tls.server.trust().revocations());
            tokio::select! {
                ending = server.serve_connection(stream, Some(principal.to_string()), stop) => {
                    tracing::debug!(%remote, %principal, %ending, "replica connection closed");
                }
                () = revocations.revoked(&serial) => {
                    tracing::warn!(%remote, %principal, serial, "replica connection cut: its certificate was revoked");
                }
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}
