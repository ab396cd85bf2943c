//! The access-control calls of the metadata API: reading the policy and the roles, changing
//! the policy, asking whether a principal may call a verb on a target, and revoking
//! certificates.

use proto::meta as pb;
use tonic::{Request, Response, Status};

use super::MetadataService;
use super::authz::{self, binding_in, policy_out};
use crate::identity::PrincipalKind;
use crate::meta::auth::{PolicyChange, Verb, role};
use crate::meta::command::{Applied, CommandV1};
use crate::meta::net::secure::Caller;
use crate::meta::state_revoked::Revoked;

/// Most verbs a custom role may list (there are fewer verbs than this).
const ROLE_VERBS_MAX: usize = 256;

impl MetadataService {
    pub(super) async fn get_policy_call(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.authorize_cluster(&req, Verb::AuthRead).await?;
        Ok(Response::new(
            self.member.sm.read(|s, _| policy_out(&s.policy)),
        ))
    }

    pub(super) async fn list_roles_call(
        &self,
        req: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesReply>, Status> {
        self.authorize_cluster(&req, Verb::AuthRead).await?;
        let mut roles: Vec<pb::Role> = role::BUILT_IN
            .iter()
            .map(|name| pb::Role {
                name: (*name).to_owned(),
                verbs: role::built_in(name)
                    .unwrap_or_default()
                    .iter()
                    .map(|v| v.name().to_owned())
                    .collect(),
                built_in: true,
            })
            .collect();
        roles.extend(
            self.member
                .sm
                .read(|s, _| policy_out(&s.policy).custom_roles),
        );
        Ok(Response::new(pb::ListRolesReply { roles }))
    }

    pub(super) async fn change_policy_call(
        &self,
        req: Request<pb::PolicyChange>,
    ) -> Result<Response<pb::Policy>, Status> {
        let auth = self.authorize_cluster(&req, Verb::AuthBind).await?;
        let by = match &auth.caller {
            Caller::Principal(p) => p.to_string(),
            Caller::InProcess | Caller::Joiner => {
                return Err(Status::permission_denied(
                    "the policy is changed by a principal with a certificate",
                ));
            }
        };
        let change = match req.into_inner().change {
            Some(pb::policy_change::Change::Bind(b)) => PolicyChange::Bind(binding_in(b)?),
            Some(pb::policy_change::Change::Unbind(b)) => PolicyChange::Unbind(binding_in(b)?),
            Some(pb::policy_change::Change::DefineRole(r)) => {
                if r.verbs.len() > ROLE_VERBS_MAX {
                    return Err(Status::invalid_argument(format!(
                        "{} verbs in one role; at most {ROLE_VERBS_MAX}",
                        r.verbs.len()
                    )));
                }
                PolicyChange::DefineRole {
                    name: r.name,
                    verbs: r.verbs,
                }
            }
            Some(pb::policy_change::Change::RemoveRole(name)) => PolicyChange::RemoveRole(name),
            None => return Err(Status::invalid_argument("the request names no change")),
        };
        let admin = self.member.sm.read(|s, _| match &change {
            PolicyChange::Bind(b) => role::is_admin(&s.policy, &b.role),
            PolicyChange::DefineRole { verbs, .. } => role::grants_admin(verbs.iter()),
            _ => false,
        });
        let command = CommandV1::ChangePolicy { by, change };
        let written = match admin {
            true => {
                self.guarded_write(&auth, "auth.grant_admin", String::new(), command)
                    .await?
            }
            false => self.write(&auth, command).await?,
        };
        match written {
            Applied::Policy { .. } => Ok(Response::new(
                self.member.sm.read(|s, _| policy_out(&s.policy)),
            )),
            _ => Err(Status::internal("unexpected result of a policy change")),
        }
    }

    pub(super) async fn can_i_call(
        &self,
        req: Request<pb::CanIRequest>,
    ) -> Result<Response<pb::CanIReply>, Status> {
        let caller = authz::caller(&req)?;
        let asked = req.get_ref().principal.clone();
        // Asking about someone else reads the policy; asking about oneself needs nothing. A
        // gateway asks for the NBD clients it serves, which is how they are held to the
        // policy.
        let myself = matches!(&caller, Caller::Principal(p) if p.to_string() == asked);
        let gateway = matches!(&caller, Caller::Principal(p) if matches!(p.kind(), PrincipalKind::Gateway(_)));
        let subject = if asked.is_empty() || myself {
            caller
        } else {
            if !gateway {
                self.authorize_cluster(&req, Verb::AuthRead).await?;
            }
            let principal = asked
                .parse()
                .map_err(|e: crate::identity::PrincipalError| {
                    Status::invalid_argument(format!("principal {asked:?}: {e}"))
                })?;
            Caller::Principal(principal)
        };
        let pb::CanIRequest { verb, target, .. } = req.into_inner();
        let verb: Verb = verb
            .parse()
            .map_err(|e: crate::meta::auth::verb::UnknownVerb| {
                Status::invalid_argument(e.to_string())
            })?;
        let (decision, principal) = self.member.sm.read(|s, _| {
            let target = authz::parse_target(&target, |v| s.pool_of(v))?;
            Ok::<_, Status>((
                authz::decide(&s.policy, &subject, verb, &target),
                subject.to_string(),
            ))
        })?;
        Ok(Response::new(match decision {
            Ok(reason) => pb::CanIReply {
                allowed: true,
                principal,
                reason,
            },
            Err(denied) => pb::CanIReply {
                allowed: false,
                principal,
                reason: denied.to_string(),
            },
        }))
    }

    pub(super) async fn revoke_certificate_call(
        &self,
        req: Request<pb::RevokedCertificate>,
    ) -> Result<Response<pb::Revocations>, Status> {
        let auth = self.authorize_cluster(&req, Verb::CertRevoke).await?;
        let pb::RevokedCertificate {
            serial,
            principal,
            reason,
        } = req.into_inner();
        let revoked = Revoked {
            serial: serial.trim().to_ascii_lowercase().replace(':', ""),
            principal,
            reason,
        };
        self.write(&auth, CommandV1::RevokeCertificate(revoked))
            .await?;
        Ok(Response::new(self.revocations()))
    }

    pub(super) async fn list_revocations_call(
        &self,
        req: Request<pb::ListRevocationsRequest>,
    ) -> Result<Response<pb::Revocations>, Status> {
        self.authorize_cluster(&req, Verb::ClusterStatus).await?;
        Ok(Response::new(self.revocations()))
    }

    fn revocations(&self) -> pb::Revocations {
        self.member.sm.read(|s, _| pb::Revocations {
            revoked: s
                .revoked
                .values()
                .map(|r| pb::RevokedCertificate {
                    serial: r.serial.clone(),
                    principal: r.principal.clone(),
                    reason: r.reason.clone(),
                })
                .collect(),
            trust_roots_pem: s.trust_roots.clone(),
        })
    }
}
