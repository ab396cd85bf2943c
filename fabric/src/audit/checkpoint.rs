//! Checkpoints: a tree size and its root, signed with the cell key (ed25519), and co-signed by
//! witnesses whose keys the administrator does not hold. What is signed is a short text note,
//! so that anyone can check it with nothing but the public keys:
//!
//! ```text
//! fabric-audit-checkpoint/1
//! <size>
//! <root, hex>
//! <time, unix ms>
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::merkle::Hash;
use crate::hex::{decode as unhex, encode as hex};

/// The first line of every checkpoint note.
pub const NOTE_HEADER: &str = "fabric-audit-checkpoint/1";

/// A witness's signature over a checkpoint's note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cosignature {
    pub witness: String,
    /// The witness's ed25519 verifying key, hex.
    pub key: String,
    pub signature: String,
}

/// A signed tree head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub size: u64,
    pub root: Hash,
    pub time_ms: u64,
    /// The cell key's verifying half, hex.
    pub key: String,
    pub signature: String,
    #[serde(default)]
    pub cosignatures: Vec<Cosignature>,
}

/// Why a signature does not check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the key is not an ed25519 public key in hex")]
    Key,
    #[error("the signature is not 64 bytes of hex")]
    Encoding,
    #[error("the signature does not match the checkpoint")]
    Mismatch,
}

/// The text a checkpoint's signatures cover.
pub fn note(size: u64, root: &Hash, time_ms: u64) -> String {
    format!("{NOTE_HEADER}\n{size}\n{root}\n{time_ms}\n")
}

impl Checkpoint {
    /// A checkpoint of `size` and `root`, signed with `key`. Ed25519 signatures are
    /// deterministic, so every member applying the same command makes the same checkpoint.
    pub fn sign(size: u64, root: Hash, time_ms: u64, key: &SigningKey) -> Checkpoint {
        let signature = key.sign(note(size, &root, time_ms).as_bytes());
        Checkpoint {
            size,
            root,
            time_ms,
            key: hex(key.verifying_key().as_bytes()),
            signature: hex(&signature.to_bytes()),
            cosignatures: Vec::new(),
        }
    }

    pub fn note(&self) -> String {
        note(self.size, &self.root, self.time_ms)
    }

    /// Checks the cell key's signature (against the key the checkpoint names; whether that
    /// key is the cell's is for the caller to know).
    pub fn verify(&self) -> Result<(), SignatureError> {
        verify(&self.key, &self.signature, self.note().as_bytes())
    }

    /// A witness's signature over this checkpoint with `key`.
    pub fn cosign(&self, witness: &str, key: &SigningKey) -> Cosignature {
        Cosignature {
            witness: witness.to_owned(),
            key: hex(key.verifying_key().as_bytes()),
            signature: hex(&key.sign(self.note().as_bytes()).to_bytes()),
        }
    }

    /// Checks a witness's signature over this checkpoint.
    pub fn verify_cosignature(&self, c: &Cosignature) -> Result<(), SignatureError> {
        verify(&c.key, &c.signature, self.note().as_bytes())
    }
}

/// Checks an ed25519 `signature` (hex) by `key` (hex) over `message`.
pub fn verify(key: &str, signature: &str, message: &[u8]) -> Result<(), SignatureError> {
    let key: [u8; 32] = unhex(key)
        .and_then(|b| b.try_into().ok())
        .ok_or(SignatureError::Key)?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| SignatureError::Key)?;
    let signature: [u8; 64] = unhex(signature)
        .and_then(|b| b.try_into().ok())
        .ok_or(SignatureError::Encoding)?;
    key.verify(message, &Signature::from_bytes(&signature))
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::leaf_hash;

    #[test]
    fn a_checkpoint_verifies_and_any_change_does_not() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let witness = SigningKey::from_bytes(&[9u8; 32]);
        let mut c = Checkpoint::sign(10, leaf_hash(b"x"), 1_000, &key);
        c.cosignatures.push(c.cosign("auditor", &witness));
        c.verify().unwrap();
        c.verify_cosignature(&c.cosignatures[0]).unwrap();
        let mut bigger = c.clone();
        bigger.size = 11;
        assert_eq!(bigger.verify(), Err(SignatureError::Mismatch));
        assert_eq!(
            bigger.verify_cosignature(&c.cosignatures[0]),
            Err(SignatureError::Mismatch)
        );
        let mut other_key = c.clone();
        other_key.key = hex(witness.verifying_key().as_bytes());
        assert_eq!(other_key.verify(), Err(SignatureError::Mismatch));
    }
}
