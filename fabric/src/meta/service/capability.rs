//! Attach capabilities as the metadata API hands them out: signed with the newest cell key for
//! the volume, the epoch just granted (or still held, on renewal) and the caller's principal,
//! so that only the caller, over a connection proving that principal, can use the epoch at
//! the replicas.

use proto::meta as pb;
use tonic::{Request, Response, Status};
use volume::capability::{Capability, now_unix_ms};
use volume::wire::VolumeId;

use super::MetadataService;
use crate::meta::auth::Verb;
use crate::meta::cell_key::CAPABILITY_TTL_MS;
use crate::meta::net::secure::Caller;

impl MetadataService {
    /// Signs a capability for volume `name` at `attach_epoch` for `caller` into `out`; an
    /// in-process caller (no principal) gets none. UNAVAILABLE while the cluster has no cell
    /// key yet (the leader makes one as soon as it leads).
    pub(super) fn sign_capability(
        &self,
        caller: &Caller,
        name: &str,
        attach_epoch: u64,
        out: &mut pb::Attachment,
    ) -> Result<(), Status> {
        let Caller::Principal(principal) = caller else {
            return Ok(());
        };
        let (id, key) = self
            .member
            .sm
            .read(|s, _| (s.volumes.get(name).map(|v| v.id), s.signing_key()));
        let id = id.ok_or_else(|| Status::not_found(format!("volume {name} not found")))?;
        let key = key.ok_or_else(|| {
            Status::unavailable("no cell key yet to sign the attach capability; retry")
        })?;
        let expires = now_unix_ms() + CAPABILITY_TTL_MS;
        let capability =
            Capability::new(VolumeId(id), attach_epoch, principal.to_string(), expires)
                .map_err(|e| Status::invalid_argument(format!("capability: {e}")))?;
        out.capability = capability.sign(&key).encode().to_vec();
        out.capability_expires_at_unix_ms = expires;
        Ok(())
    }

    pub(super) async fn renew_capability_call(
        &self,
        req: Request<pb::RenewCapabilityRequest>,
    ) -> Result<Response<pb::Attachment>, Status> {
        let auth = self
            .authorize_volume(&req, Verb::VolumeAttach, &req.get_ref().name)
            .await?;
        let caller = auth.caller.clone();
        let pb::RenewCapabilityRequest { name, attach_epoch } = req.into_inner();
        // The applied state decides: a renewal for an epoch a newer attach superseded is
        // refused, so a fenced writer cannot keep presenting its epoch to a replica that
        // restarted.
        let current = self.member.sm.read(|s, _| {
            s.volumes
                .get(&name)
                .map(|v| (v.attach_epoch, v.attachment.clone()))
        });
        let Some((latest, attachment)) = current else {
            return Err(Status::not_found(format!("volume {name} not found")));
        };
        let Some(attachment) = attachment.filter(|_| latest == attach_epoch) else {
            return Err(Status::failed_precondition(format!(
                "attach epoch {attach_epoch} of {name} is not its current attachment (epoch {latest})"
            )));
        };
        let mut out = super::convert::attachment_out(&name, &attachment);
        self.write(&auth, crate::meta::command::CommandV1::Noted)
            .await?;
        self.sign_capability(&caller, &name, attach_epoch, &mut out)?;
        Ok(Response::new(out))
    }

    pub(super) async fn get_cell_keys_call(
        &self,
        req: Request<pb::GetCellKeysRequest>,
    ) -> Result<Response<pb::CellKeys>, Status> {
        self.authorize_cluster(&req, Verb::ClusterStatus).await?;
        let keys = self.member.sm.read(|s, _| s.verifying_keys());
        Ok(Response::new(pb::CellKeys {
            verifying_keys: keys.iter().map(|k| k.to_bytes().to_vec()).collect(),
        }))
    }
}
