//! No two replicas of a PG share a failure domain, filters are obeyed, and a rule that cannot
//! be satisfied is a typed error naming the pool, never a panic or a silent violation.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{Cluster, HOST_BASE, RACK_BASE, clusters, compute, pool};
use placement::{Edit, Pool, RuleError, State, Violations};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn replicas_never_share_a_failure_domain(
        cluster in clusters(2..=6, 1..=4, 1..=3, &[0.5, 1.0, 4.0]),
        replicas in 1u32..=4,
        by_rack in any::<bool>(),
    ) {
        let (level, domains) = if by_rack { ("rack", cluster.racks.len()) } else { ("host", cluster.host_count()) };
        let map = cluster.map();
        let spec = pool(replicas, level, 256);
        if (replicas as usize) > domains {
            let err = Pool::compile(&spec, &map).unwrap_err();
            let named = matches!(err, RuleError::Unsatisfiable { ref pool, needed, .. } if pool == "test" && needed == replicas);
            prop_assert!(named, "unexpected error: {}", err);
        } else {
            let (rule, pgmap) = compute(&map, &spec);
            prop_assert_eq!(Violations::of(&map, &rule, &pgmap).total(), 0);
            for (_, set) in pgmap.iter() {
                let level = map.level_index(level).unwrap();
                let doms: HashSet<u32> = set.iter().map(|&d| map.ancestor_at(map.index_of(d).unwrap(), level).unwrap()).collect();
                prop_assert_eq!(doms.len(), replicas as usize);
            }
        }
    }

    #[test]
    fn out_and_draining_disks_receive_nothing(cluster in clusters(3..=5, 2..=3, 1..=3, &[1.0, 2.0]), pick in any::<u32>()) {
        let map = cluster.map();
        let disks = cluster.disk_count() as u32;
        let (out, draining) = (pick % disks, (pick / 7 + 1) % disks);
        let edited = map.apply(&[
            Edit::SetState { bucket: out, state: State { out: true, ..State::default() } },
            Edit::SetState { bucket: draining, state: State { draining: true, ..State::default() } },
        ]).unwrap();
        // The two may be all the disks of one rack; then only two racks can take data and the
        // rule must be refused as unsatisfiable, not half met.
        let rack = edited.level_index("rack").unwrap();
        let racks_left: HashSet<u32> = (0..disks)
            .filter(|&d| d != out && d != draining)
            .map(|d| edited.ancestor_at(edited.index_of(d).unwrap(), rack).unwrap())
            .collect();
        if racks_left.len() < 3 {
            let err = Pool::compile(&pool(3, "rack", 300), &edited).unwrap_err();
            let named = matches!(err, RuleError::Unsatisfiable { needed: 3, .. });
            prop_assert!(named, "unexpected error: {}", err);
            return Ok(());
        }
        let (rule, pgmap) = compute(&edited, &pool(3, "rack", 300));
        prop_assert_eq!(Violations::of(&edited, &rule, &pgmap).total(), 0);
        prop_assert!(pgmap.iter().all(|(_, set)| !set.contains(&out) && !set.contains(&draining)));
    }
}

/// A residency pool: only racks tagged `jurisdiction=nl` may hold its data.
#[test]
fn tag_filter_keeps_data_in_its_jurisdiction() {
    let map = Cluster::uniform(6, 2, 2).map();
    let tag = |v: &str| BTreeMap::from([("jurisdiction".to_string(), v.to_string())]);
    let mut edits: Vec<Edit> = (0..6)
        .map(|r| Edit::SetTags {
            bucket: RACK_BASE + r,
            tags: tag(if r < 3 { "nl" } else { "de" }),
        })
        .collect();
    // A host-level tag overrides its rack's: this host is not in nl even though its rack is.
    edits.push(Edit::SetTags {
        bucket: HOST_BASE,
        tags: tag("de"),
    });
    let map = map.apply(&edits).unwrap();
    let mut spec = pool(3, "rack", 500);
    spec.tags = tag("nl");
    let (rule, pgmap) = compute(&map, &spec);
    assert_eq!(Violations::of(&map, &rule, &pgmap).total(), 0);
    let nl_disks: HashSet<u32> = (2..12).collect(); // racks 0-2 hold disks 0-11; host 0 holds 0-1
    assert!(
        pgmap
            .iter()
            .all(|(_, set)| set.iter().all(|d| nl_disks.contains(d)))
    );

    spec.replicas = 4;
    let err = Pool::compile(&spec, &map).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool `test` needs 4 distinct racks with usable disks, but only 3 exist with tags jurisdiction=nl"
    );

    spec.tags = tag("fr");
    spec.replicas = 1;
    let err = Pool::compile(&spec, &map).unwrap_err();
    assert!(
        matches!(err, RuleError::Unsatisfiable { available: 0, .. }),
        "{err}"
    );
}

/// An infrastructure pool confined to one subtree.
#[test]
fn subtree_filter_confines_a_pool() {
    let map = Cluster::uniform(3, 4, 2).map();
    let mut spec = pool(3, "host", 300);
    spec.subtree = Some(RACK_BASE + 1);
    let (rule, pgmap) = compute(&map, &spec);
    assert_eq!(Violations::of(&map, &rule, &pgmap).total(), 0);
    assert!(
        pgmap
            .iter()
            .all(|(_, set)| set.iter().all(|d| (8..16).contains(d)))
    );

    spec.subtree = Some(42);
    assert_eq!(
        Pool::compile(&spec, &map).unwrap_err(),
        RuleError::UnknownSubtree {
            pool: "test".into(),
            bucket: 42
        }
    );
}

#[test]
fn too_few_racks_is_a_typed_error() {
    let map = Cluster::uniform(2, 3, 2).map();
    let err = Pool::compile(&pool(3, "rack", 64), &map).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool `test` needs 3 distinct racks with usable disks, but only 2 exist"
    );
}

#[test]
fn a_failed_rack_shrinks_the_usable_domains() {
    let map = Cluster::uniform(3, 2, 2).map();
    let map = map
        .apply(&[Edit::SetState {
            bucket: RACK_BASE,
            state: State {
                down: true,
                out: true,
                draining: false,
            },
        }])
        .unwrap();
    let err = Pool::compile(&pool(3, "rack", 64), &map).unwrap_err();
    assert!(
        matches!(
            err,
            RuleError::Unsatisfiable {
                needed: 3,
                available: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_rules_name_the_pool() {
    let map = Cluster::uniform(3, 2, 2).map();
    assert_eq!(
        Pool::compile(&pool(3, "row", 64), &map).unwrap_err(),
        RuleError::UnknownLevel {
            pool: "test".into(),
            level: "row".into()
        }
    );
    assert!(matches!(
        Pool::compile(&pool(0, "rack", 64), &map),
        Err(RuleError::BadReplicaCount { .. })
    ));
    assert!(matches!(
        Pool::compile(&pool(3, "rack", 0), &map),
        Err(RuleError::BadPgCount { .. })
    ));
}
