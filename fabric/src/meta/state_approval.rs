//! The two-person rule: a guarded call does not run when it is made; it waits as a pending
//! request until a second principal approves it. The approval names the request and the hash
//! of the exact operation the approver saw; it is refused if it comes from the requester, after
//! the request expired, for another operation, or once the target changed since the request
//! (its version is the hash of its record). The approved operation runs in the same apply as
//! the approval, so one Raft entry holds both, and both are in the audit log.
//!
//! Which calls are guarded is policy, kept here: by default deleting a volume or a pool,
//! force-attaching, changing the Raft voters, granting an admin role, shortening the audit
//! log's retention, relabelling a location (its jurisdiction), accepting drift, turning a guard
//! off, and rotating the cell key or the trust bundle's root CAs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::command::{Applied, CommandError, CommandV1, Outcome};
use super::state::ClusterState;
use crate::audit::entry::AuditCall;
use crate::audit::merkle::Hash;

/// How long a request waits for its approval by default.
pub const APPROVAL_TTL_MS_DEFAULT: u64 = 60 * 60 * 1000;
/// Longest wait that may be set.
pub const APPROVAL_TTL_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most requests kept (pending or decided, until they expire).
pub const REQUESTS_MAX: usize = 1024;

/// The guards: what needs a second person.
pub const GUARDS: &[&str] = &[
    "volume.delete",
    "pool.delete",
    "volume.force_attach",
    "raft.change_voters",
    "auth.grant_admin",
    "audit.shorten_retention",
    "topology.relabel",
    "drift.accept",
    "guard.remove",
    "cell_key.rotate",
    "ca.rotate",
];

/// Which guards are on, and how long a request waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guards {
    pub on: BTreeSet<String>,
    pub ttl_ms: u64,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            on: GUARDS.iter().map(|g| g.to_string()).collect(),
            ttl_ms: APPROVAL_TTL_MS_DEFAULT,
        }
    }
}

/// Where a request stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Pending,
    Approved {
        by: String,
        at_ms: u64,
    },
    Denied {
        by: String,
        at_ms: u64,
        reason: String,
    },
}

/// A guarded call waiting for (or decided by) a second person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// 16 hex digits: the start of the operation's hash and the log position it was made at.
    pub id: String,
    pub guard: String,
    /// The requester's call, as audited.
    pub call: AuditCall,
    pub command: CommandV1,
    /// SHA-256 of the operation's canonical JSON.
    pub op_sha256: Hash,
    /// The target's version when the request was made.
    pub target_version: Hash,
    pub expires_ms: u64,
    pub state: RequestState,
}

/// The SHA-256 of `command`'s canonical JSON: what an approval is bound to.
pub fn op_hash(command: &CommandV1) -> Hash {
    Hash(Sha256::digest(serde_json::to_vec(command).expect("a command serializes")).into())
}

impl ClusterState {
    /// The version of `target` (`volume/NAME...`, `pool/NAME`, `trust`, `cell_key`,
    /// `cluster`): the hash of its record, or of the policy, the guards and the audit limits
    /// for the cluster. Any change to it changes this.
    pub fn target_version(&self, target: &str) -> Hash {
        let record = if let Some(rest) = target.strip_prefix("volume/") {
            let name = rest.split(' ').next().unwrap_or(rest);
            serde_json::to_vec(&self.volumes.get(name))
        } else if let Some(name) = target.strip_prefix("pool/") {
            serde_json::to_vec(&self.pools.get(name))
        } else if target == super::state_trust::TRUST_TARGET {
            serde_json::to_vec(&self.trust_roots)
        } else if target == super::cell_key::CELL_KEY_TARGET {
            // The public halves: a version is shown to approvers.
            let keys: Vec<String> = self
                .verifying_keys()
                .iter()
                .map(|k| crate::hex::encode(k.as_bytes()))
                .collect();
            serde_json::to_vec(&keys)
        } else {
            serde_json::to_vec(&(&self.policy, &self.guards, self.audit.limits()))
        };
        Hash(Sha256::digest(record.expect("a record serializes")).into())
    }

    /// Whether `guard` is on.
    pub fn guarded(&self, guard: &str) -> bool {
        self.guards.on.contains(guard)
    }

    pub(super) fn request_approval(
        &mut self,
        call: &AuditCall,
        guard: &str,
        command: &CommandV1,
    ) -> Outcome {
        if !GUARDS.contains(&guard) {
            return Err(CommandError::InvalidArgument(format!("no guard {guard:?}")));
        }
        if matches!(
            command,
            CommandV1::Audited { .. } | CommandV1::Once { .. } | CommandV1::RequestApproval { .. }
        ) {
            return Err(CommandError::InvalidArgument(
                "a request holds one plain command".into(),
            ));
        }
        let now = call.time_ms;
        self.approvals.retain(|_, r| r.expires_ms > now);
        if self.approvals.len() >= REQUESTS_MAX {
            return Err(CommandError::FailedPrecondition(format!(
                "{REQUESTS_MAX} approval requests are open; wait for some to expire"
            )));
        }
        let op = op_hash(command);
        let id = format!("{}{:04x}", &op.hex()[..12], self.audit.size() & 0xffff);
        let request = ApprovalRequest {
            id: id.clone(),
            guard: guard.to_owned(),
            call: call.clone(),
            command: command.clone(),
            op_sha256: op,
            target_version: self.target_version(&call.target),
            expires_ms: now.saturating_add(self.guards.ttl_ms),
            state: RequestState::Pending,
        };
        self.approvals.insert(id, request.clone());
        Ok(Applied::Requested(Box::new(request)))
    }

    /// `approver` approves request `id`, having seen the operation with hash `op_sha256`; the
    /// operation runs now, audited as the requester's call.
    pub(super) fn approve(&mut self, approver: &AuditCall, id: &str, op_sha256: &Hash) -> Outcome {
        let now = approver.time_ms;
        let request = self
            .approvals
            .get(id)
            .ok_or_else(|| CommandError::NotFound(format!("approval request {id}")))?
            .clone();
        match &request.state {
            RequestState::Pending => {}
            RequestState::Approved { by, .. } => {
                return Err(CommandError::FailedPrecondition(format!(
                    "request {id} was approved already, by {by}"
                )));
            }
            RequestState::Denied { by, .. } => {
                return Err(CommandError::FailedPrecondition(format!(
                    "request {id} was denied, by {by}"
                )));
            }
        }
        if approver.principal == request.call.principal {
            return Err(CommandError::PermissionDenied(format!(
                "{} made request {id} and may not approve it: the two-person rule needs \
                 another principal",
                approver.principal
            )));
        }
        if now >= request.expires_ms {
            return Err(CommandError::FailedPrecondition(format!(
                "request {id} expired {} s ago; make the call again",
                (now - request.expires_ms) / 1000
            )));
        }
        if *op_sha256 != request.op_sha256 {
            return Err(CommandError::FailedPrecondition(format!(
                "the approval is for operation {op_sha256}, but request {id} is operation {}: \
                 approve what the request holds (fabricctl approvals list)",
                request.op_sha256
            )));
        }
        let version = self.target_version(&request.call.target);
        if version != request.target_version {
            return Err(CommandError::FailedPrecondition(format!(
                "{} changed since request {id} was made (version {} then, {version} now): \
                 the approval no longer covers it; make the call again",
                request.call.target, request.target_version
            )));
        }
        let mut call = request.call.clone();
        call.principal = format!("{} (approved by {})", call.principal, approver.principal);
        let outcome = self.apply_audited(&call, &request.command);
        if let Some(r) = self.approvals.get_mut(id) {
            r.state = RequestState::Approved {
                by: approver.principal.clone(),
                at_ms: now,
            };
        }
        outcome
    }

    pub(super) fn deny_request(&mut self, by: &AuditCall, id: &str, reason: &str) -> Outcome {
        let request = self
            .approvals
            .get_mut(id)
            .ok_or_else(|| CommandError::NotFound(format!("approval request {id}")))?;
        if request.state != RequestState::Pending {
            return Err(CommandError::FailedPrecondition(format!(
                "request {id} was decided already"
            )));
        }
        request.state = RequestState::Denied {
            by: by.principal.clone(),
            at_ms: by.time_ms,
            reason: reason.chars().take(256).collect(),
        };
        Ok(Applied::Nothing)
    }

    pub(super) fn set_approval_ttl(&mut self, ttl_ms: u64) -> Outcome {
        if !(1_000..=APPROVAL_TTL_MS_MAX).contains(&ttl_ms) {
            return Err(CommandError::InvalidArgument(format!(
                "an approval request waits 1 s to {} days",
                APPROVAL_TTL_MS_MAX / 86_400_000
            )));
        }
        self.guards.ttl_ms = ttl_ms;
        Ok(Applied::Nothing)
    }

    pub(super) fn set_guard(&mut self, guard: &str, on: bool) -> Outcome {
        if !GUARDS.contains(&guard) {
            return Err(CommandError::InvalidArgument(format!(
                "no guard {guard:?}; the guards are {}",
                GUARDS.join(", ")
            )));
        }
        if on {
            self.guards.on.insert(guard.to_owned());
        } else {
            self.guards.on.remove(guard);
        }
        Ok(Applied::Nothing)
    }
}

/// The requests, for listings.
pub type Requests = BTreeMap<String, ApprovalRequest>;
