//! One audit entry: who called what on which target, when, with which request, and how it
//! ended. Its leaf in the Merkle tree is the hash of its exact JSON text ([`AuditEntry::text`]),
//! which is also the line an export holds, so a verifier hashes the bytes it reads and any
//! changed byte changes the tree.

use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// What the member that took a call records of it, before the call is decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCall {
    /// Unix milliseconds, by the clock of the member that took the call.
    pub time_ms: u64,
    /// The caller's principal (from its certificate), or `member/ID` for what a member does
    /// on its own (the failure detector, the balancer, key making).
    pub principal: String,
    /// The verb checked, such as `volume.create`.
    pub verb: String,
    /// What it acted on: `cluster`, `pool/NAME`, `volume/NAME` or `node/ID`.
    pub target: String,
    /// SHA-256 of the request as the caller sent it (bodies and secrets are never kept).
    pub request_sha256: Hash,
    /// The caller's address as the connection saw it (empty for a member's own actions).
    pub peer: String,
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Allowed and applied.
    Done,
    /// Allowed, and refused by the state (not found, already exists, fenced, ...).
    Failed,
    /// Refused by the access policy; never reached the state.
    Denied,
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 0.
    pub index: u64,
    pub call: AuditCall,
    pub verdict: Verdict,
    /// Why it failed or was denied; empty when done.
    pub detail: String,
    /// The access policy's epoch the call was judged under.
    pub policy_epoch: u64,
}

impl AuditEntry {
    /// The entry's canonical text: compact JSON, fields in declaration order.
    pub fn text(&self) -> String {
        serde_json::to_string(self).expect("an audit entry serializes")
    }

    /// Its leaf hash in the tree: [`super::merkle::leaf_hash`] of [`AuditEntry::text`],
    /// with the text written straight into the hash.
    pub fn leaf(&self) -> Hash {
        let mut h = Sha256::new();
        h.update([0u8]);
        serde_json::to_writer(&mut h, self).expect("an audit entry serializes");
        Hash(h.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::leaf_hash;

    #[test]
    fn the_leaf_is_the_hash_of_the_text() {
        let entry = AuditEntry {
            index: 7,
            call: AuditCall {
                time_ms: 1_700_000_000_000,
                principal: "fabric://prod/user/\"quoted\"".into(),
                verb: "volume.create".into(),
                target: "volume/v7".into(),
                request_sha256: leaf_hash(b"request"),
                peer: "10.0.0.5:4242".into(),
            },
            verdict: Verdict::Failed,
            detail: "not found: é".into(),
            policy_epoch: 3,
        };
        assert_eq!(entry.leaf(), leaf_hash(entry.text().as_bytes()));
    }
}
