//! Minimal movement. Adding a host of weight w to a cluster of weight W moves at most
//! 1.1 × w/W of the replicas, all of them onto the new host; removing or marking out a disk
//! moves exactly the replicas it held; changing one weight moves only replicas to (growing)
//! or from (shrinking) that disk, about as many as the change requires.

mod common;

use common::{Cluster, HOST_BASE, RACK_BASE, bucket, clusters, compute, pool};
use placement::{ClusterMap, Edit, PgMap, PgMapDiff, PoolSpec, State};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// The bound on replicas moved by adding a host, relative to the optimum.
const ADD_HOST_MOVEMENT_LIMIT: f64 = 1.1;
/// PGs per weight-change scenario.
const PGS: u32 = 8192;
/// Replicas the optimum of an add-host scenario should amount to, so that sampling noise
/// (about 1/sqrt of it, 2.9%) stays well inside the 10% margin.
const ADD_HOST_OPTIMUM_REPLICAS: f64 = 1200.0;

fn remap(before: &ClusterMap, after: &ClusterMap, spec: &PoolSpec) -> (PgMap, PgMap, PgMapDiff) {
    let (_, old) = compute(before, spec);
    let (_, new) = compute(after, spec);
    let diff = PgMapDiff::between(&old, &new).unwrap();
    (old, new, diff)
}

fn held_by(pgmap: &PgMap, disk: u32) -> u64 {
    pgmap.iter().filter(|(_, set)| set.contains(&disk)).count() as u64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, rng_seed: RngSeed::Fixed(0x5eed_0002), ..ProptestConfig::default() })]

    #[test]
    fn adding_a_host_moves_replicas_only_onto_it(
        cluster in clusters(3..=4, 2..=3, 1..=2, &[1.0, 2.0]),
        rack in any::<prop::sample::Index>(),
        disks in 2usize..=3,
        replicas in 1u32..=3,
    ) {
        let map = cluster.map();
        let rack = rack.index(cluster.racks.len()) as u32;
        let host = HOST_BASE + 999;
        let first_disk = cluster.disk_count() as u32;
        let mut edits = vec![Edit::AddBucket(bucket(host, "new-host", "host", Some(RACK_BASE + rack), None))];
        for d in 0..disks as u32 {
            let id = first_disk + d;
            edits.push(Edit::AddBucket(bucket(id, &format!("new-disk-{id}"), "disk", Some(host), Some(1.0))));
        }
        let grown = map.apply(&edits).unwrap();
        let w = disks as f64;
        let share = w / (cluster.total_weight() + w);
        let pgs = (ADD_HOST_OPTIMUM_REPLICAS / share / replicas as f64).ceil() as u32;
        let (_, _, diff) = remap(&map, &grown, &pool(replicas, "host", pgs));

        let new_disks = first_disk..first_disk + disks as u32;
        prop_assert!(diff.changes.iter().all(|c| c.added.iter().all(|d| new_disks.contains(d))));
        let optimum = (pgs * replicas) as f64 * share;
        prop_assert!(
            diff.replicas_moved as f64 <= ADD_HOST_MOVEMENT_LIMIT * optimum,
            "moved {} replicas, optimum {optimum:.1}", diff.replicas_moved
        );
    }

    #[test]
    fn removing_or_marking_out_a_disk_moves_only_its_replicas(
        cluster in clusters(3..=5, 2..=3, 2..=3, &[1.0, 2.0]),
        disk in any::<prop::sample::Index>(),
        remove in any::<bool>(),
    ) {
        let map = cluster.map();
        let disk = disk.index(cluster.disk_count()) as u32;
        let edit = if remove {
            Edit::RemoveBucket { id: disk }
        } else {
            Edit::SetState { bucket: disk, state: State { out: true, ..State::default() } }
        };
        let after = map.apply(&[edit]).unwrap();
        let (old, _, diff) = remap(&map, &after, &pool(3, "rack", 2048));
        prop_assert_eq!(diff.replicas_moved, held_by(&old, disk));
        prop_assert!(diff.changes.iter().all(|c| c.removed == vec![disk] && c.added.len() == 1));
    }

    #[test]
    fn changing_one_weight_moves_only_what_it_requires(
        cluster in clusters(3..=5, 2..=3, 2..=3, &[1.0, 2.0]),
        disk in any::<prop::sample::Index>(),
        factor in prop::sample::select(vec![0.25, 0.5, 1.5, 2.0]),
    ) {
        let map = cluster.map();
        let disk = disk.index(cluster.disk_count()) as u32;
        let old_weight = cluster.racks.iter().flatten().flatten().nth(disk as usize).copied().unwrap();
        let new_weight = old_weight * factor;
        let after = map.apply(&[Edit::SetWeight { disk, weight: new_weight }]).unwrap();
        let (old, new, diff) = remap(&map, &after, &pool(2, "host", PGS));

        if factor > 1.0 {
            prop_assert!(diff.changes.iter().all(|c| c.added == vec![disk] && c.removed.len() == 1));
        } else {
            prop_assert!(diff.changes.iter().all(|c| c.removed == vec![disk] && c.added.len() == 1));
        }
        // Every move changes the disk's count by one: no replica moves in and back out.
        let change = held_by(&new, disk).abs_diff(held_by(&old, disk));
        prop_assert_eq!(diff.replicas_moved, change);
        // And the change is what the new weight asks for, within sampling noise.
        let total = cluster.total_weight();
        let expected = (2 * PGS) as f64 * (new_weight / (total - old_weight + new_weight) - old_weight / total);
        let tolerance = 5.0 * expected.abs().sqrt() + 0.1 * expected.abs() + 5.0;
        prop_assert!((change as f64 - expected.abs()).abs() <= tolerance, "moved {change}, expected {expected:.1}");
    }
}

/// A whole rack fails: only the replicas it held move, and they land in other racks.
#[test]
fn a_failed_rack_moves_only_its_replicas() {
    let cluster = Cluster::uniform(5, 3, 2);
    let map = cluster.map();
    let failed = map
        .apply(&[Edit::SetState {
            bucket: RACK_BASE + 2,
            state: State {
                down: true,
                out: true,
                draining: false,
            },
        }])
        .unwrap();
    let (old, _, diff) = remap(&map, &failed, &pool(3, "rack", 4096));
    let rack_disks = 12..18u32;
    let held: u64 = rack_disks.clone().map(|d| held_by(&old, d)).sum();
    assert_eq!(diff.replicas_moved, held);
    assert!(
        diff.changes
            .iter()
            .all(|c| c.removed.iter().all(|d| rack_disks.contains(d)))
    );
    assert!(
        diff.changes
            .iter()
            .all(|c| c.added.iter().all(|d| !rack_disks.contains(d)))
    );
}

/// Marking a disk out and back in restores the original placement exactly.
#[test]
fn out_then_in_is_a_round_trip() {
    let map = Cluster::uniform(4, 2, 3).map();
    let out = map
        .apply(&[Edit::SetState {
            bucket: 5,
            state: State {
                out: true,
                ..State::default()
            },
        }])
        .unwrap();
    let back = out
        .apply(&[Edit::SetState {
            bucket: 5,
            state: State::default(),
        }])
        .unwrap();
    let spec = pool(3, "rack", 1024);
    assert_eq!(
        compute(&map, &spec).1.iter().collect::<Vec<_>>(),
        compute(&back, &spec).1.iter().collect::<Vec<_>>()
    );
}

/// A host that replaces a removed one reuses its capacity-line hole: only PGs landing on the
/// new host move, and the line does not grow.
#[test]
fn a_replacement_host_fills_the_hole_of_the_removed_one() {
    let map = Cluster::uniform(4, 3, 2).map();
    let removed = map
        .apply(&[
            Edit::RemoveBucket { id: 0 },
            Edit::RemoveBucket { id: 1 },
            Edit::RemoveBucket { id: HOST_BASE },
        ])
        .unwrap();
    assert_eq!(removed.hole_units(), 2 * placement::WEIGHT_UNITS_PER_WEIGHT);
    let replaced = removed
        .apply(&[
            Edit::AddBucket(bucket(
                HOST_BASE + 50,
                "host-new",
                "host",
                Some(RACK_BASE),
                None,
            )),
            Edit::AddBucket(bucket(
                100,
                "disk-100",
                "disk",
                Some(HOST_BASE + 50),
                Some(1.0),
            )),
            Edit::AddBucket(bucket(
                101,
                "disk-101",
                "disk",
                Some(HOST_BASE + 50),
                Some(1.0),
            )),
        ])
        .unwrap();
    assert_eq!(replaced.hole_units(), 0);
    assert_eq!(replaced.line_units(), map.line_units());
    let (_, _, diff) = remap(&removed, &replaced, &pool(3, "rack", 2048));
    assert!(
        diff.changes
            .iter()
            .all(|c| c.added.iter().all(|d| *d == 100 || *d == 101))
    );
}
