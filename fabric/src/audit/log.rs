//! The audit log as the replicated state holds it: the retained entries, the Merkle frontier
//! at both ends of them, the signed checkpoints, and the limits. Pure and deterministic: every
//! member applying the same commands holds the same log, signatures included.
//!
//! Pruning keeps the log verifiable: entries go only up to a size that a checkpoint signed,
//! and the frontier at that size stays behind as the `base`, so the root at every later size
//! is still computed from what remains (see [`super::verify`]).

use std::collections::VecDeque;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, Cosignature, SignatureError};
use super::entry::{AuditCall, AuditEntry, Verdict};
use super::merkle::{Frontier, Hash};

/// A checkpoint is signed whenever the size reaches a multiple of this.
pub const CHECKPOINT_EVERY: u64 = 1024;
/// Default: entries kept before the oldest are pruned behind a checkpoint.
pub const RETAIN_DEFAULT: u64 = 100_000;
/// Default: entries the log holds at most; at this many, calls are refused (fail-closed).
pub const CAPACITY_DEFAULT: u64 = 200_000;
/// Largest capacity that may be set: the log lives in the members' memory and snapshots.
pub const CAPACITY_MAX: u64 = 2_000_000;
/// Entries taken past a full log's capacity, for the calls that make room (raising it, or
/// pruning), so that a full log can always be unblocked.
pub const RESERVE: u64 = 16;
/// Witness signatures kept per checkpoint.
pub const COSIGNATURES_MAX: usize = 8;

/// The log's limits, set by `fabricctl audit configure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLimits {
    /// Entries kept; older ones are pruned behind a checkpoint. 0: keep everything (a legal
    /// hold), until `capacity`.
    pub retain: u64,
    pub capacity: u64,
}

impl Default for AuditLimits {
    fn default() -> Self {
        AuditLimits {
            retain: RETAIN_DEFAULT,
            capacity: CAPACITY_DEFAULT,
        }
    }
}

/// Why the log takes no entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error(
        "the audit log is full ({held} entries, capacity {capacity}); the call is refused \
         until room is made (fabricctl audit configure --capacity, or a retention that prunes)"
    )]
    Full { held: u64, capacity: u64 },
    #[error("audit limits: {0}")]
    Limits(String),
    #[error("no checkpoint of size {0}")]
    NoCheckpoint(u64),
    #[error("witness signature: {0}")]
    Witness(SignatureError),
    #[error("the checkpoint of size {0} has {COSIGNATURES_MAX} witness signatures already")]
    Cosigned(u64),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    /// The frontier of the pruned prefix (size = index of the first retained entry).
    base: Frontier,
    entries: VecDeque<AuditEntry>,
    /// The frontier after the last entry.
    head: Frontier,
    /// Signed checkpoints, by ascending size; the first is at the base's size once anything
    /// was pruned.
    checkpoints: Vec<Checkpoint>,
    limits: AuditLimits,
}

impl AuditLog {
    pub fn size(&self) -> u64 {
        self.head.size()
    }

    /// Index of the oldest entry held.
    pub fn first_index(&self) -> u64 {
        self.base.size()
    }

    pub fn held(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn root(&self) -> Hash {
        self.head.root()
    }

    pub fn base(&self) -> &Frontier {
        &self.base
    }

    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &AuditEntry> + ExactSizeIterator {
        self.entries.iter()
    }

    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    pub fn limits(&self) -> AuditLimits {
        self.limits
    }

    /// Whether an entry can be taken; `reserve` lets the calls that make room through a full
    /// log.
    pub fn check_room(&self, reserve: bool) -> Result<(), AuditError> {
        let limit = self.limits.capacity + if reserve { RESERVE } else { 0 };
        if self.held() >= limit {
            return Err(AuditError::Full {
                held: self.held(),
                capacity: self.limits.capacity,
            });
        }
        Ok(())
    }

    /// Appends an entry for `call` (its index is the log's size), then signs a checkpoint with
    /// `key()` if the size reached a multiple of [`CHECKPOINT_EVERY`] (the key is asked for only
    /// then: deriving it costs a scalar multiplication) and prunes beyond the retention. Call
    /// [`AuditLog::check_room`] first.
    pub fn append(
        &mut self,
        call: AuditCall,
        verdict: Verdict,
        detail: String,
        policy_epoch: u64,
        key: impl FnOnce() -> Option<SigningKey>,
    ) -> u64 {
        let entry = AuditEntry {
            index: self.size(),
            call,
            verdict,
            detail,
            policy_epoch,
        };
        self.head.push(entry.leaf());
        let time_ms = entry.call.time_ms;
        self.entries.push_back(entry);
        if self.size().is_multiple_of(CHECKPOINT_EVERY) {
            self.checkpoint(time_ms, key().as_ref());
        }
        self.prune();
        self.size() - 1
    }

    /// Signs a checkpoint of the current size with `key`, unless the newest already covers
    /// it. A checkpoint not at a multiple of [`CHECKPOINT_EVERY`] (the tail) replaces the
    /// previous tail unless a witness cosigned it, so that periodic checkpoints do not pile up.
    pub fn checkpoint(&mut self, time_ms: u64, key: Option<&SigningKey>) {
        let Some(key) = key else {
            return;
        };
        let size = self.size();
        if size == 0 || self.checkpoints.last().is_some_and(|c| c.size == size) {
            return;
        }
        // A tail a witness cosigned stays: its signature vouches for that prefix.
        if let Some(last) = self.checkpoints.last()
            && !last.size.is_multiple_of(CHECKPOINT_EVERY)
            && last.size > self.base.size()
            && last.cosignatures.is_empty()
        {
            self.checkpoints.pop();
        }
        self.checkpoints
            .push(Checkpoint::sign(size, self.root(), time_ms, key));
    }

    /// Adds a witness's signature to the checkpoint of `size`.
    pub fn cosign(&mut self, size: u64, c: Cosignature) -> Result<(), AuditError> {
        let cp = self
            .checkpoints
            .iter_mut()
            .find(|cp| cp.size == size)
            .ok_or(AuditError::NoCheckpoint(size))?;
        cp.verify_cosignature(&c).map_err(AuditError::Witness)?;
        cp.cosignatures.retain(|old| old.key != c.key);
        if cp.cosignatures.len() >= COSIGNATURES_MAX {
            return Err(AuditError::Cosigned(size));
        }
        cp.cosignatures.push(c);
        Ok(())
    }

    /// Sets the limits; a capacity below what is held, or above [`CAPACITY_MAX`], is refused.
    pub fn set_limits(&mut self, limits: AuditLimits) -> Result<(), AuditError> {
        if limits.capacity == 0 || limits.capacity > CAPACITY_MAX {
            return Err(AuditError::Limits(format!(
                "capacity {}: want 1 to {CAPACITY_MAX}",
                limits.capacity
            )));
        }
        if limits.retain > limits.capacity {
            return Err(AuditError::Limits(format!(
                "retain {} is above the capacity {}",
                limits.retain, limits.capacity
            )));
        }
        self.limits = limits;
        self.prune();
        Ok(())
    }

    /// Drops the oldest entries beyond the retention, up to the newest checkpoint that leaves
    /// at least `retain` entries, so that what remains starts at a signed size.
    fn prune(&mut self) {
        let retain = self.limits.retain;
        if retain == 0 || self.held() <= retain {
            return;
        }
        let newest_allowed = self.size() - retain;
        let Some(to) = self
            .checkpoints
            .iter()
            .map(|c| c.size)
            .filter(|s| *s > self.base.size() && *s <= newest_allowed)
            .max()
        else {
            return;
        };
        while self.base.size() < to {
            let entry = self.entries.pop_front().expect("entries up to the head");
            self.base.push(entry.leaf());
        }
        self.checkpoints.retain(|c| c.size >= to);
    }

    /// The entries held with index `from` or later.
    pub fn since(&self, from: u64) -> impl Iterator<Item = &AuditEntry> {
        let skip = from.saturating_sub(self.first_index());
        self.entries.iter().skip(skip.min(self.held()) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::leaf_hash;

    fn call(i: u64) -> AuditCall {
        AuditCall {
            time_ms: 1_000 + i,
            principal: "fabric://prod/user/alice".into(),
            verb: "volume.create".into(),
            target: format!("volume/v{i}"),
            request_sha256: leaf_hash(&i.to_be_bytes()),
            peer: "10.0.0.5:4242".into(),
        }
    }

    #[test]
    fn checkpoints_come_every_1024_entries_and_pruning_keeps_a_signed_base() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let mut log = AuditLog::default();
        log.set_limits(AuditLimits {
            retain: 1500,
            capacity: 10_000,
        })
        .unwrap();
        let mut roots = Vec::new();
        for i in 0..3000 {
            log.check_room(false).unwrap();
            log.append(call(i), Verdict::Done, String::new(), 1, || {
                Some(key.clone())
            });
            roots.push(log.root());
        }
        // Pruned to the checkpoint at 1024 (the newest leaving at least 1,500 entries).
        assert_eq!(log.first_index(), 1024);
        assert_eq!(log.held(), 3000 - 1024);
        let sizes: Vec<u64> = log.checkpoints().iter().map(|c| c.size).collect();
        assert_eq!(sizes, vec![1024, 2048]);
        for c in log.checkpoints() {
            c.verify().unwrap();
            assert_eq!(c.root, roots[c.size as usize - 1]);
        }
        // The base frontier continues to the same root.
        let mut f = log.base().clone();
        for e in log.entries() {
            f.push(e.leaf());
        }
        assert_eq!(f.root(), log.root());
        // A tail checkpoint replaces the previous tail only.
        log.checkpoint(9_000, Some(&key));
        log.append(call(3000), Verdict::Done, String::new(), 1, || {
            Some(key.clone())
        });
        log.checkpoint(9_001, Some(&key));
        let sizes: Vec<u64> = log.checkpoints().iter().map(|c| c.size).collect();
        assert_eq!(sizes, vec![1024, 2048, 3001]);
    }

    #[test]
    fn a_full_log_refuses_and_the_reserve_makes_room() {
        let mut log = AuditLog::default();
        log.set_limits(AuditLimits {
            retain: 0,
            capacity: 3,
        })
        .unwrap();
        for i in 0..3 {
            log.check_room(false).unwrap();
            log.append(call(i), Verdict::Done, String::new(), 1, || None);
        }
        assert!(matches!(
            log.check_room(false),
            Err(AuditError::Full {
                held: 3,
                capacity: 3
            })
        ));
        log.check_room(true).unwrap();
        assert!(
            log.set_limits(AuditLimits {
                retain: 5,
                capacity: 4
            })
            .is_err()
        );
    }
}
