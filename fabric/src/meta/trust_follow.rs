//! Keeping a process's trust equal to the cluster's: the revoked serials ([`Revocations`]) and
//! the trust bundle (written to its `ca.pem`, see `identity::trust_bundle`). A member copies
//! its own applied state every [`STATE_COPY_MS`]; nodes and gateways ask a member every
//! `REVOCATIONS_REFRESH_MS`. Either way a revocation reaches every handshake and every open
//! connection of the process within a few seconds of its commit, and a new root the next
//! handshake.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proto::meta as pb;

use super::client::Client;
use super::member::Member;
use crate::identity::ClusterTls;
use crate::identity::revocation::REVOCATIONS_REFRESH_MS;
use crate::identity::{rotation, trust_bundle};

/// How often a member copies the revoked serials and the trust bundle from its state.
pub const STATE_COPY_MS: u64 = 1_000;

/// What a process last brought its `ca.pem` in line with: the bundle and its certificate
/// files' modification times. The files are read and checked again only when either moved.
#[derive(Default)]
struct Followed(Option<(Vec<String>, Vec<Option<SystemTime>>)>);

impl Followed {
    /// Writes `bundle` to `tls`'s `ca.pem` if it differs; a failure is logged and tried again.
    fn bundle(&mut self, tls: &ClusterTls, bundle: &[String]) {
        let stamps = tls.dir().map(rotation::stamps).unwrap_or_default();
        if self
            .0
            .as_ref()
            .is_some_and(|(b, s)| b == bundle && *s == stamps)
        {
            return;
        }
        match trust_bundle::follow(tls, bundle) {
            // Stamped after the write, so that a file it replaced does not count as moved.
            Ok(_) => {
                let stamps = tls.dir().map(rotation::stamps).unwrap_or_default();
                self.0 = Some((bundle.to_vec(), stamps));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the cluster's trust bundle not written to ca.pem")
            }
        }
    }
}

/// Copies the member's revoked serials and trust bundle into `tls`, for as long as the task
/// runs.
pub async fn follow_state(member: Arc<Member>, tls: Arc<ClusterTls>) {
    let revocations = Arc::clone(tls.server.trust().revocations());
    let mut followed = Followed::default();
    loop {
        let (revoked, bundle) = member
            .sm
            .read(|s, _| (s.revoked_serials(), s.trust_roots.clone()));
        revocations.replace(revoked);
        followed.bundle(&tls, &bundle);
        tokio::time::sleep(Duration::from_millis(STATE_COPY_MS)).await;
    }
}

/// Asks the members for the revoked serials and the trust bundle into `tls`, for as long as
/// the task runs. While no member answers, what is known stays in force.
pub async fn follow_client(client: Arc<Client>, tls: Arc<ClusterTls>) {
    let revocations = Arc::clone(tls.server.trust().revocations());
    let mut followed = Followed::default();
    loop {
        let listed = client
            .call(|mut c| async move { c.list_revocations(pb::ListRevocationsRequest {}).await })
            .await;
        match listed {
            Ok(r) => {
                revocations.replace(r.revoked.into_iter().map(|r| r.serial).collect());
                followed.bundle(&tls, &r.trust_roots_pem);
            }
            Err(e) => tracing::debug!(error = %e.message(), "revocations not fetched"),
        }
        tokio::time::sleep(Duration::from_millis(REVOCATIONS_REFRESH_MS)).await;
    }
}
