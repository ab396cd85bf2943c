//! The cell key: the ed25519 key the metadata service signs attach capabilities with, kept in
//! the replicated state so that whichever member serves an attach can sign, and published
//! (its verifying half) to the replica servers, which admit an attach epoch only with a
//! capability it signed.
//!
//! The leader makes the first key as soon as it leads a cluster that has none
//! ([`ensure`]); the secret never leaves the members (the state is not served to clients,
//! only its verifying keys are). Keeping it in Raft puts it in the members' logs and
//! snapshots, which hold the access policy already and are protected alike.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::command::{Applied, CommandError, CommandV1, Outcome};
use super::member::Member;
use super::state::ClusterState;

/// The target an approval of a cell key rotation is bound to.
pub const CELL_KEY_TARGET: &str = "cell_key";
/// Most cell keys kept: the newest signs, the others still verify while a rotation runs.
pub const CELL_KEYS_MAX: usize = volume::capability::CAPABILITY_KEYS_MAX;
/// How long a capability is valid. A gateway renews it at half its life, so a replica that
/// restarts (and asks every connection for a capability again) finds a valid one.
pub const CAPABILITY_TTL_MS: u64 = 60 * 60 * 1000;
/// Longest certificate chain of a cell key kept, in bytes.
const CELL_CERT_BYTES_MAX: usize = 16 * 1024;
/// Pause between checks for a cell key without a certificate.
const CERTIFY_RETRY_MS: u64 = 2_000;
/// Pause between checks for a missing cell key.
const ENSURE_RETRY_MS: u64 = 500;

/// One cell key, its secret as hex.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellKey {
    pub secret_hex: String,
}

impl std::fmt::Debug for CellKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CellKey(..)")
    }
}

impl CellKey {
    /// A new key from the crypto provider's random source.
    pub fn generate() -> CellKey {
        let mut secret = [0u8; 32];
        crate::identity::tls::provider()
            .secure_random
            .fill(&mut secret)
            .expect("the system's random source");
        CellKey {
            secret_hex: hex(&secret),
        }
    }

    pub fn signing_key(&self) -> Option<SigningKey> {
        let bytes = unhex(&self.secret_hex)?;
        Some(SigningKey::from_bytes(&bytes.try_into().ok()?))
    }
}

impl ClusterState {
    /// Adds a cell key (the newest signs from then on), dropping the oldest past
    /// [`CELL_KEYS_MAX`].
    pub(super) fn add_cell_key(&mut self, key: &CellKey) -> Outcome {
        if key.signing_key().is_none() {
            return Err(CommandError::InvalidArgument(
                "a cell key is 32 bytes of hex".into(),
            ));
        }
        if !self.cell_keys.contains(key) {
            self.cell_keys.push(key.clone());
        }
        while self.cell_keys.len() > CELL_KEYS_MAX {
            self.cell_keys.remove(0);
        }
        Ok(Applied::Nothing)
    }

    /// The key that signs: the newest.
    pub fn signing_key(&self) -> Option<SigningKey> {
        self.cell_keys.last().and_then(CellKey::signing_key)
    }

    /// Records the CA's certificate of cell key `key` (hex), so that audit checkpoints signed
    /// with it verify offline from the root CA alone.
    pub(super) fn certify_cell_key(&mut self, key: &str, chain_pem: &str) -> Outcome {
        if !self
            .verifying_keys()
            .iter()
            .any(|k| hex(k.as_bytes()) == key)
        {
            return Err(CommandError::NotFound(format!("cell key {key}")));
        }
        if chain_pem.len() > CELL_CERT_BYTES_MAX {
            return Err(CommandError::InvalidArgument(format!(
                "a cell key certificate chain of {} bytes: at most {CELL_CERT_BYTES_MAX}",
                chain_pem.len()
            )));
        }
        self.cell_key_certs
            .insert(key.to_owned(), chain_pem.to_owned());
        Ok(Applied::Nothing)
    }

    /// Every key's verifying half, oldest first.
    pub fn verifying_keys(&self) -> Vec<VerifyingKey> {
        self.cell_keys
            .iter()
            .filter_map(CellKey::signing_key)
            .map(|k| k.verifying_key())
            .collect()
    }
}

/// Makes the first cell key of a cluster that has none, whenever this member leads; returns
/// once the state holds one.
pub async fn ensure(member: Arc<Member>) {
    loop {
        if !member.sm.read(|s, _| s.cell_keys.is_empty()) {
            return;
        }
        if member.leading_term().is_some() {
            let key = CellKey::generate();
            let add = CommandV1::AddCellKey(key);
            match member
                .write_own("cell_key.add", "cluster".into(), add)
                .await
            {
                Ok(_) => {
                    tracing::info!("made the cell key that signs attach capabilities");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "make the cell key (retrying)"),
            }
        }
        tokio::time::sleep(Duration::from_millis(ENSURE_RETRY_MS)).await;
    }
}

/// While this member leads: has every cell key certified by `ca` (the CA of `fabricd node
/// --ca-dir`), so that the audit log's checkpoints verify from the root CA. Runs until the
/// member stops.
pub async fn certify(member: Arc<Member>, ca: Arc<crate::identity::ca::CertificateAuthority>) {
    loop {
        if member.leading_term().is_some() {
            let missing: Vec<[u8; 32]> = member.sm.read(|s, _| {
                s.verifying_keys()
                    .iter()
                    .map(|k| k.to_bytes())
                    .filter(|k| !s.cell_key_certs.contains_key(&hex(k)))
                    .collect()
            });
            for key in missing {
                let now = time::OffsetDateTime::now_utc();
                let chain_pem = match ca.certify_cell_key(&key, now) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "certify the cell key");
                        continue;
                    }
                };
                let certify = CommandV1::CertifyCellKey {
                    key: hex(&key),
                    chain_pem,
                };
                match member
                    .write_own("cell_key.certify", "cluster".into(), certify)
                    .await
                {
                    Ok(_) => tracing::info!("the CA certified the cell key"),
                    Err(e) => tracing::debug!(error = %e, "certify the cell key (retrying)"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(CERTIFY_RETRY_MS)).await;
    }
}

pub(crate) use crate::hex::{decode as unhex, encode as hex};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_the_newest_signs() {
        let mut state = ClusterState::default();
        assert!(state.signing_key().is_none());
        let keys: Vec<CellKey> = (0..CELL_KEYS_MAX + 1)
            .map(|_| CellKey::generate())
            .collect();
        for k in &keys {
            state.add_cell_key(k).unwrap();
        }
        assert_eq!(state.cell_keys.len(), CELL_KEYS_MAX, "the oldest dropped");
        assert_eq!(
            state.signing_key().unwrap().to_bytes(),
            keys.last().unwrap().signing_key().unwrap().to_bytes()
        );
        assert_eq!(state.verifying_keys().len(), CELL_KEYS_MAX);
        assert!(
            state
                .add_cell_key(&CellKey {
                    secret_hex: "zz".into()
                })
                .is_err()
        );
        assert!(
            format!("{:?}", keys[0]) == "CellKey(..)",
            "a secret never prints"
        );
    }
}
