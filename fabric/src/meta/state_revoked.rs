//! Revoked certificates in the replicated state: a serial, once revoked, is refused by every
//! process of the cluster (see `identity::revocation`). Entries are never removed — a
//! revoked certificate stays revoked until it expires, and a leaf lives at most two years —
//! and their number is bounded.

use serde::{Deserialize, Serialize};

use super::command::{Applied, CommandError, Outcome};
use super::state::ClusterState;

/// Most revoked serials kept.
pub const REVOKED_MAX: usize = 100_000;
/// Longest serial accepted, in hex digits (RFC 5280: 20 octets).
const SERIAL_HEX_MAX: usize = 40;
/// Longest reason kept, in bytes.
const REASON_BYTES_MAX: usize = 256;

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Lowercase hex.
    pub serial: String,
    /// The principal it named, as the revoker said (for the record).
    pub principal: String,
    pub reason: String,
}

impl ClusterState {
    pub(super) fn revoke_certificate(&mut self, r: &Revoked) -> Outcome {
        let valid = !r.serial.is_empty()
            && r.serial.len() <= SERIAL_HEX_MAX
            && r.serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(CommandError::InvalidArgument(format!(
                "serial {:?} is not 1 to {SERIAL_HEX_MAX} lowercase hex digits",
                r.serial
            )));
        }
        if r.reason.len() > REASON_BYTES_MAX || r.principal.len() > REASON_BYTES_MAX {
            return Err(CommandError::InvalidArgument(format!(
                "principal and reason are at most {REASON_BYTES_MAX} bytes"
            )));
        }
        if !self.revoked.contains_key(&r.serial) && self.revoked.len() >= REVOKED_MAX {
            return Err(CommandError::FailedPrecondition(format!(
                "{REVOKED_MAX} certificates are revoked already; renew the intermediate to start over"
            )));
        }
        self.revoked
            .entry(r.serial.clone())
            .or_insert_with(|| r.clone());
        Ok(Applied::Nothing)
    }

    /// The revoked serials.
    pub fn revoked_serials(&self) -> std::collections::BTreeSet<String> {
        self.revoked.keys().cloned().collect()
    }
}
