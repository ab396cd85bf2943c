//! [`CapabilityKeys`]: the cell keys whose signatures a replica accepts, replaced as a whole
//! at run time. A rotation publishes the new key beside the old one, lets the metadata service
//! sign with the new one, and drops the old one once the capabilities it signed have expired;
//! connections already admitted keep what they were admitted under.

use std::sync::Arc;

use arc_swap::ArcSwap;
use ed25519_dalek::VerifyingKey;

use super::{Capability, CapabilityError, SignedCapability};

/// Most keys accepted at once: a rotation needs two; a few more cover a rotation begun before
/// the last one ended. Each costs a signature check on every refused capability.
pub const CAPABILITY_KEYS_MAX: usize = 4;

/// Why a key set was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("no capability key: every capability would be refused")]
    Empty,
    #[error("{count} capability keys, more than the {CAPABILITY_KEYS_MAX} accepted at once")]
    TooMany { count: usize },
}

/// The verifying keys of the cell, swappable while connections verify against them.
#[derive(Debug)]
pub struct CapabilityKeys {
    keys: ArcSwap<Vec<VerifyingKey>>,
}

impl CapabilityKeys {
    pub fn new(keys: Vec<VerifyingKey>) -> Result<CapabilityKeys, KeysError> {
        check(&keys)?;
        Ok(CapabilityKeys {
            keys: ArcSwap::from_pointee(keys),
        })
    }

    /// Replaces the accepted keys; capabilities presented from now on are checked against
    /// `keys`.
    pub fn replace(&self, keys: Vec<VerifyingKey>) -> Result<(), KeysError> {
        check(&keys)?;
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    /// The keys accepted now.
    pub fn current(&self) -> Arc<Vec<VerifyingKey>> {
        self.keys.load_full()
    }

    /// [`SignedCapability::verify`] against the keys accepted now.
    pub fn verify(
        &self,
        signed: &SignedCapability,
        now_unix_ms: u64,
        peer: &str,
    ) -> Result<Capability, CapabilityError> {
        signed.verify(&self.keys.load(), now_unix_ms, peer)
    }
}

fn check(keys: &[VerifyingKey]) -> Result<(), KeysError> {
    match keys.len() {
        0 => Err(KeysError::Empty),
        n if n > CAPABILITY_KEYS_MAX => Err(KeysError::TooMany { count: n }),
        _ => Ok(()),
    }
}
