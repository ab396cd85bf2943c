//! Any node computes the same PG map from the same inputs: across runs, across a
//! serialization round trip, and across releases (pinned placements).

mod common;

use common::{Cluster, clusters, compute, pool};
use placement::synthetic::Topology;
use placement::{ClusterMap, MapSpec, PgMap, Placer, Pool};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn same_inputs_same_pg_map(cluster in clusters(3..=5, 1..=3, 1..=3, &[1.0, 2.0, 3.5]), pgs in 1u32..600) {
        let spec = pool(3, "rack", pgs);
        let (_, first) = compute(&cluster.map(), &spec);
        let (_, second) = compute(&cluster.map(), &spec);
        prop_assert_eq!(&first, &second);

        // The stored form of the map (JSON, as the metadata store would keep it) maps the same.
        let json = serde_json::to_string(&cluster.map().to_spec()).unwrap();
        let restored = ClusterMap::new(serde_json::from_str::<MapSpec>(&json).unwrap()).unwrap();
        let (_, third) = compute(&restored, &spec);
        prop_assert_eq!(&first, &third);
    }

    #[test]
    fn one_pg_maps_the_same_alone_or_in_bulk(cluster in clusters(3..=4, 2..=3, 1..=2, &[1.0, 2.0]), pg in 0u32..300) {
        let map = cluster.map();
        let (pool_rule, bulk) = compute(&map, &pool(2, "host", 300));
        let mut placer = Placer::new(&map, &pool_rule).unwrap();
        let mut out = [0u32; 2];
        placer.place(pg, &mut out).unwrap();
        prop_assert_eq!(&out[..], bulk.pg(pg));
    }
}

/// Guards the on-cluster format: if these change, every PG of every cluster moves on upgrade.
#[test]
fn placements_are_pinned_across_releases() {
    let topology = Topology {
        cells: 2,
        racks: 8,
        hosts: 32,
        disks_per_host: 4,
        disk_weight: 2.0,
    };
    let map = ClusterMap::new(topology.spec()).unwrap();
    let rule = Pool::compile(&pool(3, "rack", 1024), &map).unwrap();
    let pgmap = PgMap::compute(&map, &rule, None).unwrap();
    let got: Vec<Vec<u32>> = (0..6).map(|pg| pgmap.pg(pg).to_vec()).collect();
    assert_eq!(got, PINNED);
}

const PINNED: [[u32; 3]; 6] = [
    [42, 122, 11],
    [79, 94, 29],
    [6, 22, 38],
    [18, 101, 91],
    [85, 21, 9],
    [106, 53, 22],
];

#[test]
fn pool_id_changes_the_layout_pattern() {
    let map = Cluster::uniform(4, 2, 2).map();
    let mut a = pool(3, "rack", 512);
    let (_, first) = compute(&map, &a);
    a.id += 1;
    let (_, second) = compute(&map, &a);
    let same = first
        .iter()
        .zip(second.iter())
        .filter(|((_, x), (_, y))| x == y)
        .count();
    assert!(same < 100, "{same} of 512 PGs map identically in two pools");
}
