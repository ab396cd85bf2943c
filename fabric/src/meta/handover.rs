//! Moving a replica without losing a copy: when placement moves a PG from node A to node B
//! (a drain, a rebalance, a node added), B arrives stale and A stays in the PG as *leaving*
//! until B is current for every volume. Meanwhile A keeps serving reads and taking writes,
//! so the PG never has fewer current copies than its rule asks for, and a drain under IO
//! never degrades a volume. This is what Ceph does with a temporary acting set.
//!
//! A departing replica is kept only on a node that is in placement and up: one that is out
//! or down would only fail the writes sent to it. Everything here is a pure function of the
//! replicated state, applied by `ClusterState` on every member alike.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{NodeId, PgMap, Volume};

/// Stale replicas of one volume, by PG.
pub type StaleSets = BTreeMap<u32, BTreeSet<NodeId>>;

/// A pool's next map and what it does to the pool's volumes.
#[derive(Clone, Debug)]
pub struct Remapped {
    /// Placement's targets, followed in each PG by the replicas still leaving it.
    pub map: PgMap,
    /// The stale replicas of each volume of the pool under the new map, in the order the
    /// volumes were given.
    pub stale: Vec<StaleSets>,
}

/// Moves a pool from `before` to placement's `target`: replicas that arrive are stale for every
/// volume (they hold none of its data yet), replicas that leave a PG with a stale target stay
/// in it as leaving if `keepable`, and stale marks of replicas no longer in a PG go.
pub fn remap(
    before: &PgMap,
    target: PgMap,
    volumes: &[&Volume],
    keepable: impl Fn(NodeId) -> bool,
) -> Remapped {
    assert!(
        target.leaving.is_empty(),
        "placement's map has no leaving replicas"
    );
    assert_eq!(target.pgs.len(), target.disks.len());
    let mut map = target;
    let mut stale: Vec<StaleSets> = volumes.iter().map(|v| v.stale.clone()).collect();
    for pg in 0..map.pgs.len() {
        let key = pg as u32;
        let old = before.pgs.get(pg).map(Vec::as_slice).unwrap_or_default();
        let old_disks = before.disks.get(pg).map(Vec::as_slice).unwrap_or_default();
        let targets = map.pgs[pg].clone();
        for sets in &mut stale {
            for n in targets.iter().filter(|n| !old.contains(n)) {
                sets.entry(key).or_default().insert(*n);
            }
        }
        if stale_target(&stale, key, &targets) {
            for (i, n) in old.iter().enumerate() {
                if !map.pgs[pg].contains(n) && keepable(*n) {
                    map.pgs[pg].push(*n);
                    map.disks[pg].push(old_disks[i]);
                    map.leaving.entry(key).or_default().insert(*n);
                }
            }
        }
    }
    for sets in &mut stale {
        sets.retain(|pg, nodes| {
            let now = map.pgs.get(*pg as usize);
            nodes.retain(|n| now.is_some_and(|r| r.contains(n)));
            !nodes.is_empty()
        });
    }
    Remapped { map, stale }
}

/// Whether some volume still has a stale replica among `targets` of `pg`.
fn stale_target(stale: &[StaleSets], pg: u32, targets: &[NodeId]) -> bool {
    stale
        .iter()
        .filter_map(|sets| sets.get(&pg))
        .any(|nodes| targets.iter().any(|n| nodes.contains(n)))
}

/// The PGs of `map` whose leaving replicas may go: every target is current for every volume.
pub fn settled(map: &PgMap, volumes: &[&Volume]) -> Vec<u32> {
    let stale: Vec<StaleSets> = volumes.iter().map(|v| v.stale.clone()).collect();
    map.leaving
        .keys()
        .copied()
        .filter(|&pg| !stale_target(&stale, pg, &map.targets(pg)))
        .collect()
}

/// Drops the leaving replicas of `pg` from `map`; the nodes dropped.
pub fn drop_leaving(map: &mut PgMap, pg: u32) -> BTreeSet<NodeId> {
    let Some(leaving) = map.leaving.remove(&pg) else {
        return BTreeSet::new();
    };
    let i = pg as usize;
    (map.pgs[i], map.disks[i]) = map.pgs[i]
        .iter()
        .zip(&map.disks[i])
        .filter(|(n, _)| !leaving.contains(n))
        .map(|(n, d)| (*n, *d))
        .unzip();
    leaving
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::model::VolumeSpec;

    fn map(pgs: Vec<Vec<NodeId>>) -> PgMap {
        let disks = pgs
            .iter()
            .map(|r| r.iter().map(|n| *n as u32 * 10).collect())
            .collect();
        PgMap {
            epoch: 1,
            map_epoch: 1,
            pgs,
            disks,
            leaving: BTreeMap::new(),
        }
    }

    fn volume(name: &str) -> Volume {
        Volume {
            id: 1,
            spec: VolumeSpec {
                name: name.into(),
                pool: "p".into(),
                size_bytes: 1 << 20,
                extent_size_bytes: 1 << 20,
                request_id: String::new(),
            },
            attach_epoch: 0,
            attachment: None,
            stale: BTreeMap::new(),
            rebuilding: Vec::new(),
            qos: Default::default(),
            scrub: Default::default(),
        }
    }

    #[test]
    fn a_drained_replica_stays_until_its_successor_is_current() {
        let before = map(vec![vec![1, 2, 3], vec![1, 2, 4]]);
        let target = map(vec![vec![1, 2, 5], vec![1, 2, 4]]);
        let v = volume("v");
        let r = remap(&before, target, &[&v], |_| true);
        assert_eq!(r.map.pgs[0], vec![1, 2, 5, 3]);
        assert_eq!(r.map.disks[0], vec![10, 20, 50, 30]);
        assert_eq!(r.map.leaving[&0], BTreeSet::from([3]));
        assert_eq!(r.map.targets(0), vec![1, 2, 5]);
        assert_eq!(r.stale[0][&0], BTreeSet::from([5]));
        assert!(!r.stale[0].contains_key(&1));

        // Not settled while node 5 is stale; settled once it is restored.
        let mut v = v;
        v.stale = r.stale[0].clone();
        assert!(settled(&r.map, &[&v]).is_empty());
        v.stale.clear();
        let mut m = r.map;
        assert_eq!(settled(&m, &[&v]), vec![0]);
        assert_eq!(drop_leaving(&mut m, 0), BTreeSet::from([3]));
        assert_eq!(
            (m.pgs[0].clone(), m.disks[0].clone()),
            (vec![1, 2, 5], vec![10, 20, 50])
        );
        assert!(m.leaving.is_empty());
    }

    #[test]
    fn a_replica_on_a_node_that_cannot_serve_leaves_at_once() {
        let before = map(vec![vec![1, 2, 3]]);
        let target = map(vec![vec![1, 2, 5]]);
        let r = remap(&before, target, &[&volume("v")], |n| n != 3);
        assert_eq!(r.map.pgs[0], vec![1, 2, 5]);
        assert!(r.map.leaving.is_empty());
    }

    #[test]
    fn without_volumes_a_move_is_immediate() {
        let before = map(vec![vec![1, 2, 3]]);
        let target = map(vec![vec![1, 2, 5]]);
        let r = remap(&before, target, &[], |_| true);
        assert_eq!(r.map.pgs[0], vec![1, 2, 5]);
        assert!(r.map.leaving.is_empty());
    }

    #[test]
    fn a_leaving_replica_that_placement_brings_back_is_a_target_again() {
        let mut before = map(vec![vec![1, 2, 5, 3]]);
        before.leaving.insert(0, BTreeSet::from([3]));
        let mut v = volume("v");
        v.stale.insert(0, BTreeSet::from([5]));
        let target = map(vec![vec![1, 2, 3]]);
        let r = remap(&before, target, &[&v], |_| true);
        // Node 3 was current all along; node 5 held only part of the data and goes.
        assert_eq!(r.map.pgs[0], vec![1, 2, 3]);
        assert!(r.map.leaving.is_empty());
        assert!(r.stale[0].is_empty());
    }

    #[test]
    fn a_stale_leaving_replica_stays_stale() {
        let before = map(vec![vec![1, 2, 3]]);
        let mut v = volume("v");
        v.stale.insert(0, BTreeSet::from([3]));
        let target = map(vec![vec![1, 2, 5]]);
        let r = remap(&before, target, &[&v], |_| true);
        assert_eq!(r.map.pgs[0], vec![1, 2, 5, 3]);
        assert_eq!(r.stale[0][&0], BTreeSet::from([3, 5]));
    }
}
