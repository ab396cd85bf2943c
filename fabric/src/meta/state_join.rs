//! Join tokens in the replicated state: what an administrator handed a new node so that it can
//! get its certificate (see `identity::join`). Only the secret's SHA-256 is kept. A token is
//! redeemed at most once, before it expires, and only for a node id the cluster does not know.
//!
//! Time comes in the commands (the proposing member's clock), never from the state's apply,
//! which stays deterministic: every member judges a token's expiry by the same number.

use serde::{Deserialize, Serialize};

use super::command::{Applied, CommandError, Outcome};
use super::model::NodeId;
use super::state::ClusterState;
use crate::identity::join::{is_secret_digest, is_token_id};

/// Most join tokens kept at once (used or not, until they expire).
pub const JOIN_TOKENS_MAX: usize = 1024;
/// Longest life of a join token: a day, as kubeadm's default.
pub const JOIN_TOKEN_TTL_MAX_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest `created_by` kept, in bytes.
const CREATED_BY_BYTES_MAX: usize = 256;

/// What a joining node becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinRole {
    /// A node that registers its disks and serves replicas (the `storage-node` rights every
    /// node certificate carries); not a member of the metadata group.
    Storage,
}

impl JoinRole {
    pub fn name(self) -> &'static str {
        match self {
            JoinRole::Storage => "storage",
        }
    }
}

impl std::str::FromStr for JoinRole {
    type Err = String;

    fn from_str(s: &str) -> Result<JoinRole, String> {
        match s {
            "storage" => Ok(JoinRole::Storage),
            other => Err(format!(
                "join role {other:?}: the one role a token gives is \"storage\" (members are \
                 added with `fabricctl node add-learner`)"
            )),
        }
    }
}

/// One join token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// 16 lowercase hex digits.
    pub id: String,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
    pub role: JoinRole,
    /// The principal that made it.
    pub created_by: String,
    /// Unix milliseconds, by the clock of the member that took the request.
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// The node that redeemed it.
    pub used_by: Option<NodeId>,
}

/// Why a token cannot be redeemed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    #[error("no join token {0} (never made, or expired and forgotten)")]
    Unknown(String),
    #[error("join token {0}: wrong secret")]
    WrongSecret(String),
    #[error("join token {id} was used already (by node {node}); a token is good for one join")]
    Used { id: String, node: NodeId },
    #[error("join token {id} expired {ago_s} s ago; make a new one")]
    Expired { id: String, ago_s: u64 },
    #[error(
        "node {0} is known to the cluster already; a join token gets a certificate for a new \
         node id only"
    )]
    NodeTaken(NodeId),
}

impl From<JoinRefused> for CommandError {
    fn from(r: JoinRefused) -> CommandError {
        match r {
            JoinRefused::Unknown(_) => CommandError::NotFound(r.to_string()),
            JoinRefused::WrongSecret(_) => CommandError::InvalidArgument(r.to_string()),
            _ => CommandError::FailedPrecondition(r.to_string()),
        }
    }
}

impl ClusterState {
    pub(super) fn add_join_token(&mut self, t: &JoinTokenRecord) -> Outcome {
        if !is_token_id(&t.id) || !is_secret_digest(&t.secret_sha256) {
            return Err(CommandError::InvalidArgument(
                "a join token's id is 16 and its secret's SHA-256 64 lowercase hex digits".into(),
            ));
        }
        let ttl = t.expires_at_ms.saturating_sub(t.created_at_ms);
        if ttl == 0 || ttl > JOIN_TOKEN_TTL_MAX_MS {
            return Err(CommandError::InvalidArgument(format!(
                "a join token lives 1 s to {} h",
                JOIN_TOKEN_TTL_MAX_MS / 3_600_000
            )));
        }
        if t.used_by.is_some() || t.created_by.len() > CREATED_BY_BYTES_MAX {
            return Err(CommandError::InvalidArgument(
                "a new join token is unused, and made by a principal".into(),
            ));
        }
        // Expired tokens are forgotten as new ones come.
        self.join_tokens
            .retain(|_, old| old.expires_at_ms > t.created_at_ms);
        if self.join_tokens.contains_key(&t.id) {
            return Err(CommandError::AlreadyExists(format!("join token {}", t.id)));
        }
        if self.join_tokens.len() >= JOIN_TOKENS_MAX {
            return Err(CommandError::FailedPrecondition(format!(
                "{JOIN_TOKENS_MAX} join tokens are outstanding; wait for some to expire"
            )));
        }
        self.join_tokens.insert(t.id.clone(), t.clone());
        Ok(Applied::Nothing)
    }

    /// Whether token `id` with a secret whose digest is `secret_sha256` may be redeemed for
    /// `node` at `now_ms`.
    pub fn check_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        node: NodeId,
        now_ms: u64,
    ) -> Result<&JoinTokenRecord, JoinRefused> {
        let t = self
            .join_tokens
            .get(id)
            .ok_or_else(|| JoinRefused::Unknown(id.to_owned()))?;
        if t.secret_sha256 != secret_sha256 {
            return Err(JoinRefused::WrongSecret(id.to_owned()));
        }
        if let Some(node) = t.used_by {
            return Err(JoinRefused::Used {
                id: id.to_owned(),
                node,
            });
        }
        if now_ms >= t.expires_at_ms {
            return Err(JoinRefused::Expired {
                id: id.to_owned(),
                ago_s: (now_ms - t.expires_at_ms) / 1000,
            });
        }
        if self.nodes.contains_key(&node) {
            return Err(JoinRefused::NodeTaken(node));
        }
        Ok(t)
    }

    pub(super) fn redeem_join_token(
        &mut self,
        id: &str,
        secret_sha256: &str,
        node: NodeId,
        now_ms: u64,
    ) -> Outcome {
        self.check_join_token(id, secret_sha256, node, now_ms)?;
        if let Some(t) = self.join_tokens.get_mut(id) {
            t.used_by = Some(node);
        }
        Ok(Applied::Nothing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::join::secret_digest;

    fn token(id: &str, secret: &[u8], created: u64, ttl: u64) -> JoinTokenRecord {
        JoinTokenRecord {
            id: id.into(),
            secret_sha256: secret_digest(secret),
            role: JoinRole::Storage,
            created_by: "fabric://prod/user/alice".into(),
            created_at_ms: created,
            expires_at_ms: created + ttl,
            used_by: None,
        }
    }

    #[test]
    fn a_token_is_redeemed_once_before_it_expires() {
        let mut s = ClusterState::default();
        s.add_join_token(&token("00112233aabbccdd", b"s1", 1_000, 60_000))
            .unwrap();
        let digest = secret_digest(b"s1");
        assert_eq!(
            s.redeem_join_token("00112233aabbccdd", &secret_digest(b"s2"), 7, 2_000),
            Err(JoinRefused::WrongSecret("00112233aabbccdd".into()).into())
        );
        assert!(matches!(
            s.redeem_join_token("ffffffffffffffff", &digest, 7, 2_000),
            Err(CommandError::NotFound(_))
        ));
        s.redeem_join_token("00112233aabbccdd", &digest, 7, 2_000)
            .unwrap();
        let again = s.redeem_join_token("00112233aabbccdd", &digest, 8, 3_000);
        assert!(
            matches!(&again, Err(CommandError::FailedPrecondition(m)) if m.contains("used already (by node 7)")),
            "{again:?}"
        );

        s.add_join_token(&token("0011223344556677", b"s3", 5_000, 1_000))
            .unwrap();
        let late = s.redeem_join_token("0011223344556677", &secret_digest(b"s3"), 9, 7_500);
        assert!(
            matches!(&late, Err(CommandError::FailedPrecondition(m)) if m.contains("expired 1 s ago")),
            "{late:?}"
        );
    }

    #[test]
    fn tokens_are_checked_and_expired_ones_forgotten() {
        let mut s = ClusterState::default();
        assert!(s.add_join_token(&token("short", b"s", 0, 1_000)).is_err());
        assert!(
            s.add_join_token(&token(
                "00112233aabbccdd",
                b"s",
                0,
                JOIN_TOKEN_TTL_MAX_MS + 1
            ))
            .is_err()
        );
        s.add_join_token(&token("00112233aabbccdd", b"s", 0, 1_000))
            .unwrap();
        assert!(matches!(
            s.add_join_token(&token("00112233aabbccdd", b"s", 10, 1_000)),
            Err(CommandError::AlreadyExists(_))
        ));
        s.add_join_token(&token("0011223344556677", b"s", 5_000, 1_000))
            .unwrap();
        assert_eq!(s.join_tokens.len(), 1, "the expired token is forgotten");
    }
}
