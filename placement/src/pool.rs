//! A pool's placement rule compiled against one map epoch: which disks may hold its replicas
//! (state, subtree and tag filter) and which failure domain each disk belongs to. Compiling is
//! where an unsatisfiable rule is refused, so mapping never discovers it halfway.

use std::collections::{BTreeMap, HashSet};

use crate::error::RuleError;
use crate::map::ClusterMap;
use crate::spec::PoolSpec;

/// Most replicas one PG may have.
pub const REPLICAS_MAX: u32 = 16;
/// Most PGs one pool may have.
pub const PG_COUNT_MAX: u32 = 1 << 24;
/// `Pool::placement_domain` of a disk the pool may not use (no bucket has this index).
pub const NOT_ELIGIBLE: u32 = u32::MAX;

/// A rule ready for mapping on the map epoch it was compiled for.
#[derive(Clone, Debug)]
pub struct Pool {
    spec: PoolSpec,
    epoch: u64,
    domain_level: u16,
    /// Per disk slot: may hold replicas of this pool.
    eligible: Vec<bool>,
    /// Per disk slot: bucket index of its failure domain.
    domain: Vec<u32>,
    /// Per disk slot: its failure domain if eligible, else `NOT_ELIGIBLE`; what the hot
    /// selection loop reads (one array, one cache miss).
    placement_domain: Vec<u32>,
    eligible_units: u64,
}

impl Pool {
    /// Checks `spec` against `map` and precomputes per-disk eligibility and failure domains.
    pub fn compile(spec: &PoolSpec, map: &ClusterMap) -> Result<Pool, RuleError> {
        let pool = spec.name.clone();
        if spec.replicas == 0 || spec.replicas > REPLICAS_MAX {
            return Err(RuleError::BadReplicaCount {
                pool,
                replicas: spec.replicas,
                max: REPLICAS_MAX,
            });
        }
        if spec.pg_count == 0 || spec.pg_count > PG_COUNT_MAX {
            return Err(RuleError::BadPgCount {
                pool,
                pg_count: spec.pg_count,
                max: PG_COUNT_MAX,
            });
        }
        let domain_level =
            map.level_index(&spec.failure_domain)
                .ok_or_else(|| RuleError::UnknownLevel {
                    pool: pool.clone(),
                    level: spec.failure_domain.clone(),
                })?;
        let subtree = match spec.subtree {
            None => None,
            Some(id) => Some(map.index_of(id).ok_or(RuleError::UnknownSubtree {
                pool: pool.clone(),
                bucket: id,
            })?),
        };

        let disks = map.disk_count();
        let mut eligible = Vec::with_capacity(disks);
        let mut domain = Vec::with_capacity(disks);
        let mut eligible_units = 0u64;
        let mut domains_used = HashSet::new();
        for slot in 0..disks as u32 {
            let index = map.disk_index(slot);
            let disk = map.disk(slot);
            let d = map
                .ancestor_at(index, domain_level)
                .expect("a map has every level above a disk");
            let ok = disk.state.accepts_replicas()
                && subtree.is_none_or(|s| is_under(map, index, s))
                && tags_match(map, index, &spec.tags);
            if ok {
                eligible_units += disk.weight_units;
                domains_used.insert(d);
            }
            eligible.push(ok);
            domain.push(d);
        }
        let available = domains_used.len() as u32;
        if available < spec.replicas {
            let mut detail = String::new();
            if let Some(id) = spec.subtree {
                detail += &format!(" under bucket {id}");
            }
            if !spec.tags.is_empty() {
                let tags: Vec<String> = spec.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                detail += &format!(" with tags {}", tags.join(","));
            }
            return Err(RuleError::Unsatisfiable {
                pool,
                level: spec.failure_domain.clone(),
                needed: spec.replicas,
                available,
                detail,
            });
        }
        let placement_domain = eligible
            .iter()
            .zip(&domain)
            .map(|(&ok, &d)| if ok { d } else { NOT_ELIGIBLE })
            .collect();
        Ok(Pool {
            spec: spec.clone(),
            epoch: map.epoch(),
            domain_level,
            eligible,
            domain,
            placement_domain,
            eligible_units,
        })
    }

    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    pub fn id(&self) -> u32 {
        self.spec.id
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn replicas(&self) -> usize {
        self.spec.replicas as usize
    }

    pub fn pg_count(&self) -> u32 {
        self.spec.pg_count
    }

    /// The map epoch this rule was compiled for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn domain_level(&self) -> u16 {
        self.domain_level
    }

    #[inline]
    pub fn is_eligible(&self, slot: u32) -> bool {
        self.eligible[slot as usize]
    }

    /// Bucket index of the failure domain of disk `slot`.
    #[inline]
    pub fn domain_of(&self, slot: u32) -> u32 {
        self.domain[slot as usize]
    }

    /// The failure domain of disk `slot` if the pool may use it, else `NOT_ELIGIBLE`.
    #[inline]
    pub fn placement_domain(&self, slot: u32) -> u32 {
        self.placement_domain[slot as usize]
    }

    /// Total weight of the disks this pool may use, in weight units.
    pub fn eligible_units(&self) -> u64 {
        self.eligible_units
    }
}

fn is_under(map: &ClusterMap, bucket: u32, ancestor: u32) -> bool {
    let level = map.bucket(ancestor).level;
    map.ancestor_at(bucket, level) == Some(ancestor)
}

/// Every required tag must be set, to the same value, on the disk or its nearest ancestor that
/// defines the key.
fn tags_match(map: &ClusterMap, disk: u32, required: &BTreeMap<String, String>) -> bool {
    required.iter().all(|(key, value)| {
        let mut at = Some(disk);
        while let Some(i) = at {
            let b = map.bucket(i);
            if let Some(v) = b.tags.get(key) {
                return v == value;
            }
            at = b.parent;
        }
        false
    })
}
