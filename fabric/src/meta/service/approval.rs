//! The two-person rule at the API: guarded calls become pending requests, and approvers
//! approve or deny them (see `meta/state_approval.rs` for the rules themselves).

use proto::meta as pb;
use tonic::{Request, Response, Status};

use super::MetadataService;
use super::authz::Authorized;
use crate::audit::merkle::Hash;
use crate::meta::auth::Verb;
use crate::meta::command::{Applied, CommandV1};
use crate::meta::state_approval::{ApprovalRequest, GUARDS, RequestState};

/// The response metadata key naming the request a guarded call became.
pub const APPROVAL_REQUEST_HEADER: &str = "fabric-approval-request";

fn info(r: &ApprovalRequest) -> pb::ApprovalInfo {
    let (state, decided_by, reason) = match &r.state {
        RequestState::Pending => ("pending", String::new(), String::new()),
        RequestState::Approved { by, .. } => ("approved", by.clone(), String::new()),
        RequestState::Denied { by, reason, .. } => ("denied", by.clone(), reason.clone()),
    };
    pb::ApprovalInfo {
        id: r.id.clone(),
        guard: r.guard.clone(),
        requester: r.call.principal.clone(),
        verb: r.call.verb.clone(),
        target: r.call.target.clone(),
        operation: r.command.to_string(),
        op_sha256: r.op_sha256.hex(),
        expires_at_ms: r.expires_ms,
        state: state.into(),
        decided_by,
        reason,
    }
}

impl MetadataService {
    /// Writes `command` as `auth`'s call, or, while `guard` is on, makes it a request that
    /// waits for a second person and refuses the call with its id.
    pub(super) async fn guarded_write(
        &self,
        auth: &Authorized,
        guard: &str,
        request_id: String,
        command: CommandV1,
    ) -> Result<Applied, Status> {
        if !self.member.sm.read(|s, _| s.guarded(guard)) {
            return self.write_once(auth, request_id, command).await;
        }
        let request = CommandV1::RequestApproval {
            guard: guard.to_owned(),
            command: Box::new(command),
        };
        match self.write_once(auth, request_id, request).await? {
            Applied::Requested(r) => {
                let mut status = Status::failed_precondition(format!(
                    "{} on {} needs a second person ({guard} is guarded): request {} waits for \
                     another principal with request.approve (fabricctl approve {}); it expires \
                     in {} min",
                    r.call.verb,
                    r.call.target,
                    r.id,
                    r.id,
                    r.expires_ms.saturating_sub(r.call.time_ms) / 60_000
                ));
                if let Ok(v) = r.id.parse() {
                    status.metadata_mut().insert(APPROVAL_REQUEST_HEADER, v);
                }
                Err(status)
            }
            _ => Err(Status::internal("an approval request made no request")),
        }
    }

    fn approvals(&self) -> pb::Approvals {
        self.member.sm.read(|s, _| pb::Approvals {
            requests: s.approvals.values().map(info).collect(),
            guards_on: s.guards.on.iter().cloned().collect(),
            guards: GUARDS.iter().map(|g| g.to_string()).collect(),
            ttl_ms: s.guards.ttl_ms,
        })
    }

    pub(super) async fn list_approvals_call(
        &self,
        req: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::Approvals>, Status> {
        self.authorize_cluster(&req, Verb::ClusterStatus).await?;
        Ok(Response::new(self.approvals()))
    }

    pub(super) async fn approve_call(
        &self,
        req: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::ApprovalInfo>, Status> {
        let auth = self.authorize_cluster(&req, Verb::RequestApprove).await?;
        let pb::ApproveRequest { id, op_sha256 } = req.into_inner();
        let op_sha256 = Hash::from_hex(&op_sha256)
            .ok_or_else(|| Status::invalid_argument("op_sha256 is not 64 hex digits"))?;
        // A trust change is checked against the nodes' certificates again, as they are now.
        let pending = self
            .member
            .sm
            .read(|s, _| s.approvals.get(&id).map(|r| r.command.clone()));
        if let Some(CommandV1::SetTrustRoots { roots }) = &pending {
            self.check_bundle_covers_nodes(roots)?;
        }
        let approve = CommandV1::Approve {
            id: id.clone(),
            op_sha256,
            by: auth.call.clone(),
        };
        let applied = self.write(&auth, approve).await?;
        // A voter change runs outside the state, now that its approval committed.
        if let Applied::Voters(voters) = applied {
            self.change_voters_now(voters).await?;
        }
        let r = self.member.sm.read(|s, _| s.approvals.get(&id).map(info));
        r.map(Response::new)
            .ok_or_else(|| Status::not_found(format!("approval request {id}")))
    }

    pub(super) async fn deny_approval_call(
        &self,
        req: Request<pb::DenyApprovalRequest>,
    ) -> Result<Response<pb::ApprovalInfo>, Status> {
        let auth = self.authorize_cluster(&req, Verb::RequestApprove).await?;
        let pb::DenyApprovalRequest { id, reason } = req.into_inner();
        let deny = CommandV1::DenyRequest {
            id: id.clone(),
            reason,
            by: auth.call.clone(),
        };
        self.write(&auth, deny).await?;
        let r = self.member.sm.read(|s, _| s.approvals.get(&id).map(info));
        r.map(Response::new)
            .ok_or_else(|| Status::not_found(format!("approval request {id}")))
    }

    pub(super) async fn set_guard_call(
        &self,
        req: Request<pb::SetGuardRequest>,
    ) -> Result<Response<pb::Approvals>, Status> {
        let auth = self.authorize_cluster(&req, Verb::GuardSet).await?;
        let pb::SetGuardRequest { guard, on, ttl_ms } = req.into_inner();
        if ttl_ms != 0 {
            self.write(&auth, CommandV1::SetApprovalTtl { ttl_ms })
                .await?;
        }
        if !guard.is_empty() {
            let command = CommandV1::SetGuard { guard, on };
            if on {
                self.write(&auth, command).await?;
            } else {
                self.guarded_write(&auth, "guard.remove", String::new(), command)
                    .await?;
            }
        }
        Ok(Response::new(self.approvals()))
    }
}
