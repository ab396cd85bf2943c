//! Invalid maps are refused with a message naming the offending item: duplicate ids, cycles,
//! zero or negative weights, a disk outside any host, unknown levels, broken layouts.

mod common;

use common::{Cluster, ROOT, bucket, levels};
use placement::{ClusterMap, Edit, LineRange, MapError, MapSpec};
use proptest::prelude::*;

fn spec_with(extra: Vec<placement::BucketSpec>) -> MapSpec {
    let mut spec = Cluster::uniform(1, 1, 1).spec();
    spec.buckets.extend(extra);
    spec
}

fn error_of(spec: MapSpec) -> String {
    ClusterMap::new(spec).unwrap_err().to_string()
}

#[test]
fn duplicate_ids_name_both_buckets() {
    let spec = spec_with(vec![bucket(
        0,
        "disk-dup",
        "disk",
        Some(common::HOST_BASE),
        Some(1.0),
    )]);
    assert_eq!(
        error_of(spec),
        "bucket id 0 is used by both `disk-0` and `disk-dup`"
    );
}

#[test]
fn cycles_are_found() {
    let spec = spec_with(vec![
        bucket(10, "rack-a", "rack", Some(11), None),
        bucket(11, "rack-b", "rack", Some(10), None),
    ]);
    assert!(
        matches!(ClusterMap::new(spec).unwrap_err(), MapError::Cycle { bucket } if bucket == "rack-a" || bucket == "rack-b")
    );
}

#[test]
fn a_disk_outside_any_host_is_refused() {
    let spec = spec_with(vec![bucket(20, "disk-loose", "disk", None, Some(1.0))]);
    assert_eq!(
        error_of(spec),
        "bucket `disk-loose` (disk) is not inside any host"
    );
    let spec = spec_with(vec![bucket(
        21,
        "disk-in-rack",
        "disk",
        Some(common::RACK_BASE),
        Some(1.0),
    )]);
    assert_eq!(
        error_of(spec),
        "bucket `disk-in-rack` (disk) sits under `rack-0` (rack); expected a host"
    );
}

#[test]
fn unknown_levels_and_parents_are_named() {
    let spec = spec_with(vec![bucket(30, "row-1", "row", Some(ROOT), None)]);
    assert_eq!(
        error_of(spec),
        "bucket `row-1` has level `row`, which is not one of the map's levels"
    );
    let spec = spec_with(vec![bucket(31, "host-x", "host", Some(999), None)]);
    assert_eq!(
        error_of(spec),
        "bucket `host-x` names parent id 999, which does not exist"
    );
}

#[test]
fn roots_must_be_unique() {
    let spec = spec_with(vec![bucket(40, "root-2", "root", None, None)]);
    assert_eq!(
        error_of(spec),
        "the map has two roots, `root` and `root-2`; exactly one is allowed"
    );
    let mut spec = Cluster::uniform(1, 1, 1).spec();
    spec.buckets.retain(|b| b.level != "root");
    assert_eq!(
        ClusterMap::new(spec).unwrap_err(),
        MapError::UnknownParent {
            bucket: "rack-0".into(),
            parent: ROOT
        }
    );
}

#[test]
fn weights_on_internal_buckets_and_missing_weights_are_refused() {
    let mut spec = Cluster::uniform(1, 1, 1).spec();
    spec.buckets[1].weight = Some(3.0);
    assert_eq!(
        error_of(spec),
        "bucket `rack-0` is not a disk and must not carry a weight or a layout"
    );
    let spec = spec_with(vec![bucket(
        50,
        "disk-light",
        "disk",
        Some(common::HOST_BASE),
        None,
    )]);
    assert_eq!(error_of(spec), "disk `disk-light` has no weight");
}

#[test]
fn broken_layouts_name_the_disks() {
    let map = Cluster::uniform(1, 1, 2).map();
    let mut spec = map.to_spec();
    let first = spec.buckets.iter().position(|b| b.id == 0).unwrap();
    spec.buckets[first].ranges = vec![LineRange {
        start: 0,
        len: 3 * placement::WEIGHT_UNITS_PER_WEIGHT,
    }];
    assert_eq!(
        error_of(spec),
        format!(
            "disk `disk-0` covers {} units of the capacity line but weighs only {}",
            3 << 16,
            1 << 16
        )
    );
    let mut spec = map.to_spec();
    let second = spec.buckets.iter().position(|b| b.id == 1).unwrap();
    spec.buckets[second].ranges = vec![LineRange {
        start: 100,
        len: 1 << 16,
    }];
    assert_eq!(
        error_of(spec),
        "disks `disk-0` and `disk-1` overlap on the capacity line at 100"
    );
}

#[test]
fn levels_must_be_usable() {
    let mut spec = Cluster::uniform(1, 1, 1).spec();
    spec.levels = vec!["disk".into()];
    assert!(matches!(
        ClusterMap::new(spec).unwrap_err(),
        MapError::TooFewLevels { got: 1, .. }
    ));
    let mut spec = Cluster::uniform(1, 1, 1).spec();
    spec.levels = levels();
    spec.levels[1] = "host".into();
    assert!(matches!(
        ClusterMap::new(spec).unwrap_err(),
        MapError::BadLevelName { .. }
    ));
}

#[test]
fn edits_are_checked_too() {
    let map = Cluster::uniform(2, 1, 1).map();
    assert_eq!(
        map.apply(&[Edit::RemoveBucket { id: 77 }]).unwrap_err(),
        MapError::EditUnknownBucket { id: 77 }
    );
    assert_eq!(
        map.apply(&[Edit::RemoveBucket {
            id: common::HOST_BASE
        }])
        .unwrap_err()
        .to_string(),
        "bucket `host-0` still has children; remove them first"
    );
    assert!(matches!(
        map.apply(&[Edit::SetWeight {
            disk: common::HOST_BASE,
            weight: 1.0
        }])
        .unwrap_err(),
        MapError::SetWeightOnInternalBucket { .. }
    ));
    assert!(matches!(
        map.apply(&[Edit::SetWeight {
            disk: 0,
            weight: -1.0
        }])
        .unwrap_err(),
        MapError::BadWeight { .. }
    ));
}

proptest! {
    #[test]
    fn zero_negative_and_non_finite_weights_name_the_disk(
        weight in prop_oneof![Just(0.0), Just(-1.0), Just(f64::NAN), Just(f64::INFINITY), -1e9..=0.0f64, Just(1e-9), Just(2e6)],
    ) {
        let spec = spec_with(vec![bucket(60, "disk-bad", "disk", Some(common::HOST_BASE), Some(weight))]);
        let err = ClusterMap::new(spec).unwrap_err();
        let named = matches!(err, MapError::BadWeight { ref disk, .. } if disk == "disk-bad");
        prop_assert!(named, "unexpected error: {}", err);
    }

    /// Whatever garbage comes in, validation returns an error or a map; it never panics.
    #[test]
    fn arbitrary_specs_never_panic(
        parents in proptest::collection::vec((0u32..12, proptest::option::of(0u32..12), 0usize..5, proptest::option::of(-2.0f64..3.0)), 0..12),
    ) {
        let buckets = parents
            .into_iter()
            .enumerate()
            .map(|(i, (id, parent, level, weight))| bucket(id, &format!("b{i}"), ["root", "rack", "host", "disk", "shelf"][level], parent, weight))
            .collect();
        let spec = MapSpec { epoch: 1, levels: levels(), buckets, block_units: None };
        if let Ok(map) = ClusterMap::new(spec) {
            prop_assert!(map.disk_count() <= 12);
        }
    }
}
