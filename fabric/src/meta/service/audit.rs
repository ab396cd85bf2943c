//! The audit log's calls: reading it (`audit.read`), the head an export starts with, its
//! limits (`audit.configure`) and witnesses' cosignatures (`audit.witness`).

use proto::meta as pb;
use tonic::{Request, Response, Status};

use super::MetadataService;
use super::convert::status_of;
use crate::audit::checkpoint::Cosignature;
use crate::audit::entry::AuditEntry;
use crate::audit::log::AuditLimits;
use crate::audit::verify::ExportHeader;
use crate::meta::auth::Verb;
use crate::meta::command::CommandV1;

/// Most entries one `ListAudit` answers.
pub const AUDIT_PAGE_MAX: usize = 10_000;

fn matches(e: &AuditEntry, r: &pb::ListAuditRequest) -> bool {
    e.call.time_ms >= r.since_ms
        && (r.principal.is_empty() || e.call.principal == r.principal)
        && (r.verb.is_empty() || e.call.verb == r.verb)
}

impl MetadataService {
    pub(super) async fn list_audit_call(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::AuditEntries>, Status> {
        self.authorize_cluster(&req, Verb::AuditRead).await?;
        let r = req.into_inner();
        let limit = match r.limit as usize {
            0 => AUDIT_PAGE_MAX,
            n => n.min(AUDIT_PAGE_MAX),
        };
        let out = self.member.sm.read(|s, _| pb::AuditEntries {
            entries: s
                .audit
                .since(r.from_index)
                .filter(|e| matches(e, &r))
                .take(limit)
                .map(AuditEntry::text)
                .collect(),
            first_index: s.audit.first_index(),
            size: s.audit.size(),
        });
        Ok(Response::new(out))
    }

    fn audit_head(&self) -> pb::AuditHead {
        self.member.sm.read(|s, _| {
            let header = ExportHeader::of(&s.audit, &s.cell_key_certs);
            let limits = s.audit.limits();
            pb::AuditHead {
                header_json: serde_json::to_string(&header).expect("an export header serializes"),
                retain: limits.retain,
                capacity: limits.capacity,
                held: s.audit.held(),
            }
        })
    }

    pub(super) async fn get_audit_head_call(
        &self,
        req: Request<pb::GetAuditHeadRequest>,
    ) -> Result<Response<pb::AuditHead>, Status> {
        self.authorize_cluster(&req, Verb::AuditRead).await?;
        if req.get_ref().checkpoint {
            let index = crate::meta::audit_tail::checkpoint_now(&self.member)
                .await
                .map_err(status_of)?;
            // The head is read from this member's state: wait until it applied the checkpoint.
            self.member
                .applied_at_least(index)
                .await
                .map_err(status_of)?;
        }
        Ok(Response::new(self.audit_head()))
    }

    pub(super) async fn configure_audit_call(
        &self,
        req: Request<pb::ConfigureAuditRequest>,
    ) -> Result<Response<pb::AuditHead>, Status> {
        let auth = self.authorize_cluster(&req, Verb::AuditConfigure).await?;
        let pb::ConfigureAuditRequest { retain, capacity } = req.into_inner();
        let now = self.member.sm.read(|s, _| s.audit.limits());
        // Keeping fewer entries than before (or any, after keeping all) destroys the record.
        let shorter =
            (retain != 0 && (now.retain == 0 || retain < now.retain)) || capacity < now.capacity;
        let command = CommandV1::SetAuditLimits(AuditLimits { retain, capacity });
        match shorter {
            true => {
                self.guarded_write(&auth, "audit.shorten_retention", String::new(), command)
                    .await?
            }
            false => self.write(&auth, command).await?,
        };
        Ok(Response::new(self.audit_head()))
    }

    pub(super) async fn cosign_audit_call(
        &self,
        req: Request<pb::CosignAuditRequest>,
    ) -> Result<Response<pb::AuditHead>, Status> {
        let auth = self.authorize_cluster(&req, Verb::AuditWitness).await?;
        let pb::CosignAuditRequest {
            size,
            witness,
            key,
            signature,
        } = req.into_inner();
        let cosignature = Cosignature {
            witness,
            key,
            signature,
        };
        self.write(&auth, CommandV1::AuditCosign { size, cosignature })
            .await?;
        Ok(Response::new(self.audit_head()))
    }
}
