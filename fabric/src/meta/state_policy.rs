//! The access policy's part of the replicated state: starting it once, and changing it on
//! behalf of a principal. The policy's own rules decide; this only turns its refusals into
//! command errors every member reaches alike.

use super::auth::{Policy, PolicyChange, PolicyError};
use super::command::{Applied, CommandError, Outcome};
use super::state::ClusterState;

impl ClusterState {
    /// Starts the policy with `admin` as cluster-admin, unless it was started before.
    pub(super) fn init_policy(
        &mut self,
        admin: &str,
        guards_off: bool,
        approvers: &[String],
    ) -> Outcome {
        if self.policy.epoch != 0 {
            return Err(CommandError::FailedPrecondition(format!(
                "the access policy is initialized already (epoch {})",
                self.policy.epoch
            )));
        }
        let mut policy = Policy::bootstrap(admin).map_err(policy_error)?;
        for approver in approvers {
            let bind = PolicyChange::Bind(super::auth::Binding {
                principal: approver.clone(),
                role: "approver".into(),
                scope: super::auth::Scope::Cluster,
            });
            policy
                .apply_change(admin, &bind, &|_: &str| None)
                .map_err(policy_error)?;
        }
        self.policy = policy;
        if guards_off {
            self.guards.on.clear();
        }
        Ok(Applied::Policy {
            epoch: self.policy.epoch,
            changed: true,
        })
    }

    /// Applies `change` on behalf of `by`.
    pub(super) fn change_policy(&mut self, by: &str, change: &PolicyChange) -> Outcome {
        let volumes = &self.volumes;
        let pool_of = |name: &str| volumes.get(name).map(|v| v.spec.pool.clone());
        let mut policy = self.policy.clone();
        let changed = policy
            .apply_change(by, change, &pool_of)
            .map_err(policy_error)?;
        self.policy = policy;
        Ok(Applied::Policy {
            epoch: self.policy.epoch,
            changed,
        })
    }

    /// The pool of volume `name`, if there is such a volume.
    pub fn pool_of(&self, name: &str) -> Option<String> {
        self.volumes.get(name).map(|v| v.spec.pool.clone())
    }
}

fn policy_error(e: PolicyError) -> CommandError {
    match e {
        PolicyError::Escalation { .. } => CommandError::PermissionDenied(e.to_string()),
        PolicyError::UnknownRole(_) => CommandError::NotFound(e.to_string()),
        PolicyError::RoleInUse { .. } => CommandError::FailedPrecondition(e.to_string()),
        PolicyError::BadPrincipal(_)
        | PolicyError::BuiltIn(_)
        | PolicyError::BadRoleName(_)
        | PolicyError::UnknownVerb(_) => CommandError::InvalidArgument(e.to_string()),
    }
}
