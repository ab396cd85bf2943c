//! Measurements of a PG map: how evenly replicas follow weight, and whether any PG breaks its
//! rule. Used by tests, the balancer and the simulator alike, so all three agree on "balanced".

use std::collections::HashSet;

use crate::map::ClusterMap;
use crate::pgmap::PgMap;
use crate::pool::Pool;

/// Fraction of its target by which a disk may deviate and still count as balanced.
pub const BALANCED_FRACTION: f64 = 0.01;
/// Replicas by which a disk may deviate and still count as balanced, whatever its target.
pub const BALANCED_REPLICAS: f64 = 1.0;

/// How far from its target a disk may be and still count as balanced: ±1 PG or ±1%.
pub fn deviation_allowed(target: f64) -> f64 {
    BALANCED_REPLICAS.max(BALANCED_FRACTION * target)
}

/// Replicas per disk slot; ids the map does not know are ignored (see `violations`).
pub fn replica_counts(map: &ClusterMap, pgmap: &PgMap) -> Vec<u64> {
    let mut counts = vec![0u64; map.disk_count()];
    for (_, replicas) in pgmap.iter() {
        for &id in replicas {
            if let Some(slot) = map.slot_of(id) {
                counts[slot as usize] += 1;
            }
        }
    }
    counts
}

/// Each disk slot's fair share of `total` replicas: proportional to weight among the disks
/// the pool may use, zero for the others.
pub fn targets(map: &ClusterMap, pool: &Pool, total: u64) -> Vec<f64> {
    let units = pool.eligible_units().max(1) as f64;
    (0..map.disk_count() as u32)
        .map(|slot| {
            if pool.is_eligible(slot) {
                total as f64 * map.disk(slot).weight_units as f64 / units
            } else {
                0.0
            }
        })
        .collect()
}

/// Distribution of replicas over the disks a pool may use.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Balance {
    pub disks: usize,
    pub replicas: u64,
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub stddev: f64,
    /// Highest replicas-per-unit-of-weight over the mean of that: 1.0 is perfect.
    pub max_over_mean: f64,
    /// Largest |replicas - target| of any disk, in replicas.
    pub worst_deviation: f64,
    /// Disks outside `deviation_allowed` of their target.
    pub unbalanced_disks: usize,
}

impl Balance {
    pub fn of(map: &ClusterMap, pool: &Pool, pgmap: &PgMap) -> Balance {
        let counts = replica_counts(map, pgmap);
        let total: u64 = counts.iter().sum();
        let targets = targets(map, pool, total);
        let eligible: Vec<usize> = (0..counts.len())
            .filter(|&s| pool.is_eligible(s as u32))
            .collect();
        let n = eligible.len().max(1) as f64;
        let mean = eligible.iter().map(|&s| counts[s] as f64).sum::<f64>() / n;
        let variance = eligible
            .iter()
            .map(|&s| (counts[s] as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let mut balance = Balance {
            disks: eligible.len(),
            replicas: total,
            min: eligible.iter().map(|&s| counts[s]).min().unwrap_or(0),
            max: eligible.iter().map(|&s| counts[s]).max().unwrap_or(0),
            mean,
            stddev: variance.sqrt(),
            max_over_mean: 0.0,
            worst_deviation: 0.0,
            unbalanced_disks: 0,
        };
        for &s in &eligible {
            let (count, target) = (counts[s] as f64, targets[s]);
            balance.max_over_mean = balance.max_over_mean.max(count / target);
            let deviation = (count - target).abs();
            balance.worst_deviation = balance.worst_deviation.max(deviation);
            if deviation > deviation_allowed(target) {
                balance.unbalanced_disks += 1;
            }
        }
        balance
    }
}

/// PGs that break their rule, by kind. All must be zero for a map this crate produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Violations {
    /// PGs with two replicas in one failure domain (or on one disk).
    pub shared_domain: u64,
    /// Replicas on a disk the pool may not use (out, draining, filtered) or that does not exist.
    pub unusable_disk: u64,
}

impl Violations {
    pub fn total(&self) -> u64 {
        self.shared_domain + self.unusable_disk
    }

    pub fn of(map: &ClusterMap, pool: &Pool, pgmap: &PgMap) -> Violations {
        let mut v = Violations::default();
        let mut domains = HashSet::new();
        for (_, replicas) in pgmap.iter() {
            domains.clear();
            let mut shared = false;
            for &id in replicas {
                match map.slot_of(id) {
                    Some(slot) if pool.is_eligible(slot) => {
                        shared |= !domains.insert(pool.domain_of(slot))
                    }
                    _ => v.unusable_disk += 1,
                }
            }
            v.shared_domain += shared as u64;
        }
        v
    }
}
