//! The attach capability a gateway (or the rebuild agent) holds for each attached volume:
//! given to the replica pool when the attach returns it, so that every session to a replica
//! presents it before the volume's first IO, and renewed at half its life for as long as the
//! attachment lasts — a replica that restarts asks every new connection for a valid one. A
//! renewal replaces the capability without pausing IO: sessions already admitted go on.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::meta as pb;
use tokio::task::JoinHandle;
use volume::capability::{SignedCapability, now_unix_ms};
use volume::client::ReplicaPool;

use crate::meta::client::Client;

/// Pause before a failed renewal is tried again.
const RENEW_RETRY_MS: u64 = 5_000;
/// Earliest a renewal runs after the previous one.
const RENEW_INTERVAL_MIN_MS: u64 = 1_000;

/// Gives the pool the capability of `attachment`, if it carries one (an in-process caller
/// without a principal gets none). Returns its expiry.
pub(crate) fn install(pool: &ReplicaPool, attachment: &pb::Attachment) -> anyhow::Result<u64> {
    if attachment.capability.is_empty() {
        return Ok(0);
    }
    let signed = SignedCapability::decode(&attachment.capability)
        .context("the attach capability the metadata service returned")?;
    pool.capabilities().set(&signed);
    Ok(attachment.capability_expires_at_unix_ms)
}

/// Renews the capability of volume `name` at attach epoch `epoch` until dropped.
pub(crate) struct Renewal(JoinHandle<()>);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Renewal {
    /// Starts renewing a capability that expires at `expires_at_unix_ms` (none if 0).
    pub(crate) fn start(
        client: Arc<Client>,
        pool: Arc<ReplicaPool>,
        name: String,
        epoch: u64,
        expires_at_unix_ms: u64,
    ) -> Option<Arc<Renewal>> {
        if expires_at_unix_ms == 0 {
            return None;
        }
        Some(Arc::new(Renewal(tokio::spawn(renew(
            client,
            pool,
            name,
            epoch,
            expires_at_unix_ms,
        )))))
    }
}

async fn renew(
    client: Arc<Client>,
    pool: Arc<ReplicaPool>,
    name: String,
    attach_epoch: u64,
    mut expires: u64,
) {
    loop {
        let half_life = expires.saturating_sub(now_unix_ms()) / 2;
        tokio::time::sleep(Duration::from_millis(half_life.max(RENEW_INTERVAL_MIN_MS))).await;
        let req = pb::RenewCapabilityRequest {
            name: name.clone(),
            attach_epoch,
        };
        let renewed = client
            .call(|mut c| {
                let req = req.clone();
                async move { c.renew_capability(req).await }
            })
            .await;
        match renewed
            .map_err(anyhow::Error::from)
            .and_then(|a| install(&pool, &a))
        {
            Ok(next) => {
                tracing::debug!(volume = %name, epoch = attach_epoch, "attach capability renewed");
                expires = next;
            }
            Err(e) => {
                let superseded = e
                    .downcast_ref::<tonic::Status>()
                    .is_some_and(|s| s.code() == tonic::Code::FailedPrecondition);
                if superseded {
                    tracing::warn!(volume = %name, epoch = attach_epoch, error = %e, "attach capability not renewed: the attachment was superseded");
                    return;
                }
                tracing::warn!(volume = %name, epoch = attach_epoch, error = %e, "attach capability not renewed; retrying");
                tokio::time::sleep(Duration::from_millis(RENEW_RETRY_MS)).await;
            }
        }
    }
}
