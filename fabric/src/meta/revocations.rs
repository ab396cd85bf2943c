//! Keeping a process's [`Revocations`] equal to the cluster's: a member copies its own applied
//! state every [`STATE_COPY_MS`]; nodes and gateways ask a member every
//! `REVOCATIONS_REFRESH_MS`. Either way a revocation reaches every handshake and every open
//! connection of the process within a few seconds of its commit.

use std::sync::Arc;
use std::time::Duration;

use proto::meta as pb;

use super::client::Client;
use super::member::Member;
use crate::identity::revocation::{REVOCATIONS_REFRESH_MS, Revocations};

/// How often a member copies the revoked serials from its state.
pub const STATE_COPY_MS: u64 = 1_000;

/// Copies the member's revoked serials into `revocations`, for as long as the task runs.
pub async fn follow_state(member: Arc<Member>, revocations: Arc<Revocations>) {
    loop {
        revocations.replace(member.sm.read(|s, _| s.revoked_serials()));
        tokio::time::sleep(Duration::from_millis(STATE_COPY_MS)).await;
    }
}

/// Asks the members for the revoked serials into `revocations`, for as long as the task runs.
/// While no member answers, the last known set stays in force.
pub async fn follow_client(client: Arc<Client>, revocations: Arc<Revocations>) {
    loop {
        let listed = client
            .call(|mut c| async move { c.list_revocations(pb::ListRevocationsRequest {}).await })
            .await;
        match listed {
            Ok(r) => revocations.replace(r.revoked.into_iter().map(|r| r.serial).collect()),
            Err(e) => tracing::debug!(error = %e.message(), "revocations not fetched"),
        }
        tokio::time::sleep(Duration::from_millis(REVOCATIONS_REFRESH_MS)).await;
    }
}
