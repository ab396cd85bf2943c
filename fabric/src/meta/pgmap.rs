//! The seam between the metadata state machine and placement: one function that turns the
//! registered nodes and a pool's rule into the pool's PG map.
//!
//! It must be a pure function of its inputs (every member computes the same map when it applies
//! the same command), so the hash below is spelled out rather than taken from `std`, whose
//! hasher may change between Rust releases.

use std::collections::BTreeMap;

use super::model::{NodeId, NodeRecord, Participation, Rule};

/// Why a rule cannot be placed on the current topology.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "rule needs {replicas} replicas in distinct {level}s but the eligible nodes span only {available} {level}(s)"
    )]
    NotEnoughDomains {
        replicas: u32,
        level: String,
        available: usize,
    },
}

/// Replica lists for `pg_count` placement groups: for each PG, `rule.replicas` nodes in distinct
/// `rule.failure_domain`s, primary first. Only nodes that are `in` and match the tag filter take
/// part.
pub fn compute_pg_map(
    nodes: &BTreeMap<NodeId, NodeRecord>,
    rule: &Rule,
    pg_count: u32,
) -> Result<Vec<Vec<NodeId>>, PlacementError> {
    // Domain name → eligible node ids in it.
    let mut domains: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
    for (id, node) in nodes {
        let loc = &node.registration.location;
        if node.participation != Participation::In || !loc.matches(&rule.tag_filter) {
            continue;
        }
        // A node without the level is its own domain: it cannot share one with anybody.
        let domain = loc
            .at(&rule.failure_domain)
            .map(str::to_string)
            .unwrap_or_else(|| format!("node-{id}"));
        domains.entry(domain).or_default().push(*id);
    }
    if domains.len() < rule.replicas as usize {
        return Err(PlacementError::NotEnoughDomains {
            replicas: rule.replicas,
            level: rule.failure_domain.clone(),
            available: domains.len(),
        });
    }
    let mut pgs = Vec::with_capacity(pg_count as usize);
    for pg in 0..pg_count {
        // Straw-style draw: each domain (then each node within it) draws a hash for this PG;
        // the highest draws win. Adding a domain only moves the PGs it wins.
        let mut ranked: Vec<(u64, &Vec<NodeId>)> = domains
            .iter()
            .map(|(name, ids)| (draw(pg as u64, name.as_bytes()), ids))
            .collect();
        ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
        let replicas: Vec<NodeId> = ranked
            .into_iter()
            .take(rule.replicas as usize)
            .map(|(_, ids)| {
                *ids.iter()
                    .max_by_key(|id| draw(pg as u64, &id.to_le_bytes()))
                    .expect("a domain holds at least one node")
            })
            .collect();
        pgs.push(replicas);
    }
    Ok(pgs)
}

/// A stable 64-bit hash of `(pg, key)`: FNV-1a folded through a splitmix64 finalizer.
fn draw(pg: u64, key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pg.to_le_bytes().iter().chain(key) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
