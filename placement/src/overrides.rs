//! Upmap-style exceptions: "PG N of this pool uses disk X instead of disk Y". The balancer
//! writes them; mapping applies them after selection. A remap whose source is no longer a
//! replica is skipped, and if a PG's remaps together would break the rule (target out,
//! filtered, already a replica, or sharing a failure domain) none of them is applied, so a
//! stale override can never violate placement.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::map::ClusterMap;
use crate::pool::{Pool, REPLICAS_MAX};

/// Replace replica `from` with `to` (both disk ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remap {
    pub from: u32,
    pub to: u32,
}

/// All overrides of one pool, keyed by PG.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    pub pool: u32,
    entries: BTreeMap<u32, Vec<Remap>>,
}

impl Overrides {
    pub fn new(pool: u32) -> Overrides {
        Overrides {
            pool,
            entries: BTreeMap::new(),
        }
    }

    /// The remaps of `pg`, in the order they are applied.
    pub fn get(&self, pg: u32) -> &[Remap] {
        self.entries.get(&pg).map(Vec::as_slice).unwrap_or(&[])
    }

    /// PGs with at least one remap.
    pub fn pg_count(&self) -> usize {
        self.entries.len()
    }

    pub fn remap_count(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &[Remap])> {
        self.entries.iter().map(|(&pg, r)| (pg, r.as_slice()))
    }

    /// Records that `pg` now uses `to` where it used `from`. Chains with an earlier remap of the
    /// same PG (x→from then from→to becomes x→to), and undoes it if that brings `x` back.
    pub fn redirect(&mut self, pg: u32, from: u32, to: u32) {
        assert_ne!(from, to, "a remap must change the disk");
        let remaps = self.entries.entry(pg).or_default();
        if let Some(i) = remaps.iter().position(|r| r.to == from) {
            if remaps[i].from == to {
                remaps.remove(i);
            } else {
                remaps[i].to = to;
            }
        } else {
            remaps.push(Remap { from, to });
        }
        if remaps.is_empty() {
            self.entries.remove(&pg);
        }
    }

    /// Drops every remap of `pg`.
    pub fn clear(&mut self, pg: u32) {
        self.entries.remove(&pg);
    }

    /// Applies the remaps of `pg` to its selected replicas (disk slots), all together: each
    /// remap whose source is present is substituted in order, then the result must satisfy the
    /// rule (usable disks, distinct failure domains) or none of them is applied. Returns how
    /// many remaps were applied.
    pub(crate) fn apply(&self, map: &ClusterMap, pool: &Pool, pg: u32, slots: &mut [u32]) -> usize {
        let remaps = self.get(pg);
        if remaps.is_empty() {
            return 0;
        }
        let mut candidate = [0u32; REPLICAS_MAX as usize];
        let candidate = &mut candidate[..slots.len()];
        candidate.copy_from_slice(slots);
        let mut applied = 0;
        for remap in remaps {
            let (Some(from), Some(to)) = (map.slot_of(remap.from), map.slot_of(remap.to)) else {
                continue;
            };
            if let Some(at) = candidate.iter().position(|&s| s == from) {
                candidate[at] = to;
                applied += 1;
            }
        }
        if applied == 0 || !satisfies_rule(pool, candidate) {
            return 0;
        }
        slots.copy_from_slice(candidate);
        applied
    }
}

/// Every replica on a usable disk, no two in one failure domain.
pub(crate) fn satisfies_rule(pool: &Pool, slots: &[u32]) -> bool {
    slots.iter().enumerate().all(|(i, &s)| {
        pool.is_eligible(s)
            && slots[..i]
                .iter()
                .all(|&t| pool.domain_of(t) != pool.domain_of(s))
    })
}

/// Whether replica `at` of `slots` may become disk `to` without breaking the pool's rule.
pub(crate) fn remap_is_safe(pool: &Pool, slots: &[u32], at: usize, to: u32) -> bool {
    if !pool.is_eligible(to) || slots.contains(&to) {
        return false;
    }
    let domain = pool.domain_of(to);
    slots
        .iter()
        .enumerate()
        .all(|(i, &s)| i == at || pool.domain_of(s) != domain)
}
