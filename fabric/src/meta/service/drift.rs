//! Drift at the API: the leader takes each node's report with its heartbeat, audits what
//! starts and stops differing, and answers `fabricctl drift`.

use std::sync::Arc;

use proto::meta as pb;
use tonic::{Request, Response, Status};

use super::MetadataService;
use crate::meta::auth::Verb;
use crate::meta::clock::unix_ms;
use crate::meta::command::CommandV1;
use crate::meta::drift::{DriftException, Observed};
use crate::meta::member::Member;
use crate::meta::net::secure::Caller;

/// Writes, in the background, what a report changed: the node's first desired state, and an
/// audit entry for each item that began or ended to differ.
fn record(member: Arc<Member>, node: u64, observed: &Observed) {
    let mut writes: Vec<(&'static str, String, CommandV1)> = Vec::new();
    if let Some(items) = &observed.baseline {
        writes.push((
            "drift.baseline",
            format!("node/{node}"),
            CommandV1::SetDriftBaseline {
                node,
                items: items.clone(),
            },
        ));
    }
    for item in &observed.detected {
        writes.push((
            "drift.detected",
            format!("node/{node} {item}"),
            CommandV1::Noted,
        ));
    }
    for item in &observed.cleared {
        writes.push((
            "drift.cleared",
            format!("node/{node} {item}"),
            CommandV1::Noted,
        ));
    }
    if writes.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for (verb, target, command) in writes {
            if let Err(e) = member.write_own(verb, target.clone(), command).await {
                tracing::warn!(%target, error = %e, "record {verb}");
            } else if verb != "drift.baseline" {
                tracing::warn!(%target, "{verb}");
            }
        }
    });
}

impl MetadataService {
    /// Takes the drift part of a heartbeat the leader accepted.
    pub(super) fn observe_drift(&self, req: &pb::HeartbeatRequest) -> Observed {
        if req.drift_digest.is_empty() {
            return Observed::default();
        }
        let items =
            (!req.drift_items.is_empty()).then(|| req.drift_items.clone().into_iter().collect());
        let observed = self.member.sm.read(|s, _| {
            self.drift
                .observe(s, req.node, &req.drift_digest, items, unix_ms())
        });
        record(Arc::clone(&self.member), req.node, &observed);
        observed
    }

    fn drift_report(&self) -> pb::DriftReport {
        let now = unix_ms();
        let items = self.member.sm.read(|s, _| self.drift.list(s, now));
        pb::DriftReport {
            items: items
                .into_iter()
                .map(|d| pb::DriftItem {
                    node: d.node,
                    item: d.item,
                    class: d.class.name().into(),
                    desired: d.desired,
                    reported: d.reported,
                    since_ms: d.since_ms,
                    excepted_until_ms: d.excepted_until_ms.unwrap_or(0),
                })
                .collect(),
        }
    }

    /// The drift table lives on the leader: another member says where it is.
    pub(super) fn leader_only(&self) -> Result<(), Status> {
        let metrics = self.member.metrics();
        if metrics.current_leader == Some(self.member.id) {
            return Ok(());
        }
        let leader = metrics
            .current_leader
            .and_then(|id| {
                metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .cloned()
            })
            .map(|n| n.rpc_addr)
            .unwrap_or_default();
        Err(Status::unavailable(format!(
            "drift is known to the leader ({leader}), not to member {}",
            self.member.id
        )))
    }

    pub(super) async fn list_drift_call(
        &self,
        req: Request<pb::ListDriftRequest>,
    ) -> Result<Response<pb::DriftReport>, Status> {
        self.authorize_cluster(&req, Verb::ClusterStatus).await?;
        self.leader_only()?;
        Ok(Response::new(self.drift_report()))
    }

    pub(super) async fn accept_drift_call(
        &self,
        req: Request<pb::AcceptDriftRequest>,
    ) -> Result<Response<pb::DriftReport>, Status> {
        let auth = self.authorize_cluster(&req, Verb::DriftAccept).await?;
        self.leader_only()?;
        let pb::AcceptDriftRequest { node, item } = req.into_inner();
        let value = self
            .drift
            .reported(node, &item)
            .ok_or_else(|| Status::not_found(format!("node {node} reported no {item}")))?;
        let accept = CommandV1::AcceptDrift { node, item, value };
        self.guarded_write(&auth, "drift.accept", String::new(), accept)
            .await?;
        Ok(Response::new(self.drift_report()))
    }

    pub(super) async fn except_drift_call(
        &self,
        req: Request<pb::ExceptDriftRequest>,
    ) -> Result<Response<pb::DriftReport>, Status> {
        let auth = self.authorize_cluster(&req, Verb::DriftExcept).await?;
        let pb::ExceptDriftRequest {
            node,
            item,
            for_seconds,
            reason,
        } = req.into_inner();
        if for_seconds == 0 || for_seconds > 90 * 86_400 {
            return Err(Status::invalid_argument(
                "an exception lasts 1 s to 90 days: exceptions expire",
            ));
        }
        let by = match &auth.caller {
            Caller::Principal(p) => p.to_string(),
            _ => "in-process".into(),
        };
        let exception = DriftException {
            node,
            item,
            until_ms: unix_ms() + for_seconds * 1000,
            reason,
            by,
        };
        self.write(&auth, CommandV1::ExceptDrift(exception)).await?;
        self.leader_only()?;
        Ok(Response::new(self.drift_report()))
    }
}
