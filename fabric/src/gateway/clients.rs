//! Which NBD clients may use which volumes. A client that connected over TLS with a
//! certificate of the cluster is who its certificate names, and may open a volume only if
//! the policy grants it `volume.attach` there (`volume.get` to describe or list it); the
//! metadata service decides (`CanI`), so the gateway holds no copy of the policy. A
//! plaintext client is the hypervisor host's own (the gateway accepts plaintext only on
//! loopback, a Unix socket, or where the operator asked for it) and acts as the gateway.
//!
//! An open TLS session is cut once the client's certificate is revoked, or once the policy no
//! longer lets it attach the volume (asked every [`SESSION_RECHECK_MS`]).

use std::sync::Arc;
use std::time::Duration;

use proto::meta as pb;
use volume::nbd::{ExportError, Peer};

use crate::identity::revocation::serial_of;
use crate::identity::{ClusterName, ClusterTls, Principal};
use crate::meta::auth::Verb;
use crate::meta::client::Client;

/// Refuses `peer` unless it may `verb` on volume `name`; the refusal names what was missing.
pub(crate) async fn admit(
    client: &Client,
    cluster: Option<&ClusterName>,
    peer: &Peer,
    verb: Verb,
    name: &str,
) -> Result<(), ExportError> {
    let (true, Some(cluster)) = (peer.tls, cluster) else {
        return Ok(());
    };
    let principal = Principal::from_peer_chain(&peer.certificates, cluster)
        .map_err(|e| ExportError::Refused(format!("client certificate names no principal: {e}")))?;
    let req = pb::CanIRequest {
        verb: verb.name().to_owned(),
        target: format!("volume/{name}"),
        principal: principal.to_string(),
    };
    let answer = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.can_i(req).await }
        })
        .await
        .map_err(|s| ExportError::Unavailable(format!("access not checked: {}", s.message())))?;
    match answer.allowed {
        true => Ok(()),
        false => Err(ExportError::Refused(answer.reason)),
    }
}

/// How often an open session's permission is asked again.
pub const SESSION_RECHECK_MS: u64 = 2_000;

/// Resolves once `peer`, a TLS client that opened volume `name`, must be cut.
pub(crate) async fn withdrawn(client: Arc<Client>, tls: Arc<ClusterTls>, peer: Peer, name: String) {
    if !peer.tls {
        return std::future::pending().await;
    }
    let serial = peer.leaf().and_then(serial_of).unwrap_or_default();
    let revocations = Arc::clone(tls.server.trust().revocations());
    let lost = async {
        loop {
            tokio::time::sleep(Duration::from_millis(SESSION_RECHECK_MS)).await;
            // Only a refusal cuts: while the metadata service is away the session goes on.
            let answer = admit(
                &client,
                Some(tls.cluster()),
                &peer,
                Verb::VolumeAttach,
                &name,
            )
            .await;
            if let Err(ExportError::Refused(why)) = answer {
                tracing::warn!(peer = %peer.address, volume = %name, reason = %why, "NBD client lost its permission");
                return;
            }
        }
    };
    tokio::select! {
        () = revocations.revoked(&serial) => {
            tracing::warn!(peer = %peer.address, volume = %name, serial, "NBD client's certificate revoked");
        }
        () = lost => {}
    }
}
