//! The audit log in the replicated state (see [`crate::audit`]). A call reaches the state
//! wrapped in `CommandV1::Audited`: its entry is appended in the same apply as the change,
//! whatever the change's outcome, and if the log cannot take the entry the change is refused
//! and nothing happens (fail-closed). Calls the access policy refused arrive as
//! `CommandV1::AuditDenied` and only add their entry.

use crate::audit::checkpoint::Cosignature;
use crate::audit::entry::{AuditCall, Verdict};
use crate::audit::log::AuditLimits;

use super::cell_key::CellKey;
use super::command::{Applied, CommandError, CommandV1, Outcome};
use super::state::ClusterState;

/// Longest principal, verb, target or peer an entry keeps, in bytes.
const FIELD_BYTES_MAX: usize = 512;

fn check_call(call: &AuditCall) -> Result<(), CommandError> {
    for (what, field) in [
        ("principal", &call.principal),
        ("verb", &call.verb),
        ("target", &call.target),
        ("peer", &call.peer),
    ] {
        if field.len() > FIELD_BYTES_MAX {
            return Err(CommandError::InvalidArgument(format!(
                "audit {what} of {} bytes: at most {FIELD_BYTES_MAX}",
                field.len()
            )));
        }
    }
    Ok(())
}

impl ClusterState {
    /// Applies `command` as `call`, recording it whatever its outcome.
    pub(super) fn apply_audited(&mut self, call: &AuditCall, command: &CommandV1) -> Outcome {
        check_call(call)?;
        if matches!(
            command,
            CommandV1::Audited { .. } | CommandV1::AuditDenied { .. } | CommandV1::Once { .. }
        ) {
            return Err(CommandError::InvalidArgument(
                "an audited call wraps one plain command".into(),
            ));
        }
        // The call that raises the limits may use the reserve: a full log can be unblocked.
        let reserve = matches!(command, CommandV1::SetAuditLimits(_));
        self.audit
            .check_room(reserve)
            .map_err(|e| CommandError::AuditFull(e.to_string()))?;
        let outcome = match command {
            CommandV1::RequestApproval { guard, command } => {
                self.request_approval(call, guard, command)
            }
            _ => self.apply_v1(command),
        };
        let (verdict, detail) = match &outcome {
            Ok(Applied::Requested(r)) => (
                Verdict::Done,
                format!("waits for a second person's approval: request {}", r.id),
            ),
            Ok(_) => (Verdict::Done, String::new()),
            Err(e) => (Verdict::Failed, e.to_string()),
        };
        let keys = &self.cell_keys;
        self.audit
            .append(call.clone(), verdict, detail, self.policy.epoch, || {
                keys.last().and_then(CellKey::signing_key)
            });
        outcome
    }

    /// Records a call the access policy refused.
    pub(super) fn audit_denied(&mut self, call: &AuditCall, reason: &str) -> Outcome {
        check_call(call)?;
        self.audit
            .check_room(false)
            .map_err(|e| CommandError::AuditFull(e.to_string()))?;
        let keys = &self.cell_keys;
        let reason: String = reason.chars().take(FIELD_BYTES_MAX).collect();
        self.audit.append(
            call.clone(),
            Verdict::Denied,
            reason,
            self.policy.epoch,
            || keys.last().and_then(CellKey::signing_key),
        );
        Ok(Applied::Nothing)
    }

    pub(super) fn audit_checkpoint(&mut self, time_ms: u64) -> Outcome {
        let key = self.signing_key();
        self.audit.checkpoint(time_ms, key.as_ref());
        Ok(Applied::Nothing)
    }

    pub(super) fn set_audit_limits(&mut self, limits: &AuditLimits) -> Outcome {
        self.audit
            .set_limits(*limits)
            .map_err(|e| CommandError::InvalidArgument(e.to_string()))?;
        Ok(Applied::Nothing)
    }

    pub(super) fn audit_cosign(&mut self, size: u64, c: &Cosignature) -> Outcome {
        self.audit
            .cosign(size, c.clone())
            .map_err(|e| CommandError::FailedPrecondition(e.to_string()))?;
        Ok(Applied::Nothing)
    }
}
