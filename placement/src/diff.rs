//! What changes between two PG maps of one pool: which PGs gain and lose which replicas, and
//! how many bytes recovery would copy. A replica that only changes position (say, becomes
//! primary) moves no data and is counted separately.

use crate::error::PlacementError;
use crate::pgmap::PgMap;

/// One PG whose replica set changed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PgChange {
    pub pg: u32,
    /// Disks that no longer hold the PG.
    pub removed: Vec<u32>,
    /// Disks that must receive a copy.
    pub added: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PgMapDiff {
    /// PGs whose replica set changed.
    pub pgs_changed: u64,
    /// Replicas that must be copied to a new disk.
    pub replicas_moved: u64,
    /// PGs whose primary changed (data moving or not).
    pub primaries_changed: u64,
    pub changes: Vec<PgChange>,
}

impl PgMapDiff {
    /// Compares two PG maps of the same pool and PG count.
    pub fn between(old: &PgMap, new: &PgMap) -> Result<PgMapDiff, PlacementError> {
        if old.pool() != new.pool() || old.pg_count() != new.pg_count() {
            return Err(PlacementError::Incomparable {
                first_pool: old.pool(),
                second_pool: new.pool(),
                first_pgs: old.pg_count(),
                second_pgs: new.pg_count(),
            });
        }
        let mut diff = PgMapDiff::default();
        for ((pg, before), (_, after)) in old.iter().zip(new.iter()) {
            if before.first() != after.first() {
                diff.primaries_changed += 1;
            }
            if before.iter().all(|d| after.contains(d)) && after.iter().all(|d| before.contains(d))
            {
                continue;
            }
            let removed: Vec<u32> = before
                .iter()
                .copied()
                .filter(|d| !after.contains(d))
                .collect();
            let added: Vec<u32> = after
                .iter()
                .copied()
                .filter(|d| !before.contains(d))
                .collect();
            diff.pgs_changed += 1;
            diff.replicas_moved += added.len() as u64;
            diff.changes.push(PgChange { pg, removed, added });
        }
        Ok(diff)
    }

    /// Bytes copied if every PG holds `pg_bytes`.
    pub fn bytes_moved(&self, pg_bytes: u64) -> u64 {
        self.replicas_moved * pg_bytes
    }

    /// Bytes copied given each PG's size.
    pub fn bytes_moved_by(&self, pg_bytes: impl Fn(u32) -> u64) -> u64 {
        self.changes
            .iter()
            .map(|c| c.added.len() as u64 * pg_bytes(c.pg))
            .sum()
    }
}
