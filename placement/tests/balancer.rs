//! The balancer moves at most its budget per round, never breaks a rule, and with enough
//! budget brings every disk within ±1 PG (or ±1%) of its weighted target. Its overrides
//! reproduce its PG map, and survive map changes without ever violating placement.

mod common;

use common::{Cluster, clusters, compute, pool};
use placement::{Balance, Edit, Overrides, PgMap, PgMapDiff, Pool, State, Violations, balance};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_round_respects_its_budget_and_the_rule(
        cluster in clusters(3..=5, 2..=4, 1..=3, &[1.0, 2.0, 3.0]),
        budget in 0usize..200,
        by_rack in any::<bool>(),
    ) {
        let map = cluster.map();
        let (rule, before) = compute(&map, &pool(3, if by_rack { "rack" } else { "host" }, 1000));
        let plan = balance(&map, &rule, &before, &Overrides::new(rule.id()), budget).unwrap();
        prop_assert!(plan.moves.len() <= budget);
        let diff = PgMapDiff::between(&before, &plan.pgmap).unwrap();
        prop_assert!(diff.pgs_changed as usize <= budget);
        prop_assert_eq!(Violations::of(&map, &rule, &plan.pgmap).total(), 0);
        prop_assert_eq!(&PgMap::compute(&map, &rule, Some(&plan.overrides)).unwrap(), &plan.pgmap);
    }

    #[test]
    fn enough_rounds_balance_every_disk(
        cluster in clusters(3..=5, 3..=4, 1..=3, &[1.0, 1.5, 2.0]),
        replicas in 2u32..=3,
    ) {
        let map = cluster.map();
        let (rule, mut current) = compute(&map, &pool(replicas, "host", 100 * cluster.disk_count() as u32));
        let mut overrides = Overrides::new(rule.id());
        for _round in 0..4 {
            let plan = balance(&map, &rule, &current, &overrides, 500).unwrap();
            current = plan.pgmap;
            overrides = plan.overrides;
        }
        let after = Balance::of(&map, &rule, &current);
        prop_assert_eq!(after.unbalanced_disks, 0, "{:?}", after);
        prop_assert_eq!(Violations::of(&map, &rule, &current).total(), 0);
    }

    #[test]
    fn overrides_never_break_the_rule_after_the_map_changes(
        cluster in clusters(3..=4, 2..=3, 2..=3, &[1.0, 2.0]),
        pick in any::<u32>(),
    ) {
        let map = cluster.map();
        let spec = pool(3, "rack", 600);
        let (rule, before) = compute(&map, &spec);
        let plan = balance(&map, &rule, &before, &Overrides::new(rule.id()), 10_000).unwrap();
        // Take out a disk that received balancer moves, if any.
        let target = plan.moves.get(pick as usize % plan.moves.len().max(1)).map_or(0, |m| m.to);
        let changed = map.apply(&[Edit::SetState { bucket: target, state: State { out: true, ..State::default() } }]).unwrap();
        let rule = Pool::compile(&spec, &changed).unwrap();
        let after = PgMap::compute(&changed, &rule, Some(&plan.overrides)).unwrap();
        prop_assert_eq!(Violations::of(&changed, &rule, &after).total(), 0);
        prop_assert!(after.iter().all(|(_, set)| !set.contains(&target)));
    }
}

/// 10 racks of 4 hosts of 3 disks, 3 replicas across racks: one round with enough budget
/// takes the spread from Poisson noise to ±1 PG, with moves close to the least possible.
#[test]
fn one_round_balances_a_uniform_cluster() {
    let map = Cluster::uniform(10, 4, 3).map();
    let (rule, before) = compute(&map, &pool(3, "rack", 4000));
    let plan = balance(&map, &rule, &before, &Overrides::new(rule.id()), usize::MAX).unwrap();
    let after = Balance::of(&map, &rule, &plan.pgmap);
    assert_eq!(after.unbalanced_disks, 0, "{after:?}");
    assert!(after.max - after.min <= 2, "{after:?}");
    let excess: f64 = placement::stats::replica_counts(&map, &before)
        .iter()
        .map(|&c| (c as f64 - 100.0 - 1.0).max(0.0))
        .sum();
    assert!(
        plan.moves.len() as f64 <= 1.5 * excess + 10.0,
        "{} moves for {excess} excess replicas",
        plan.moves.len()
    );
}

#[test]
fn a_zero_budget_plans_nothing() {
    let map = Cluster::uniform(4, 2, 2).map();
    let (rule, before) = compute(&map, &pool(3, "rack", 400));
    let plan = balance(&map, &rule, &before, &Overrides::new(rule.id()), 0).unwrap();
    assert!(plan.moves.is_empty());
    assert_eq!(plan.pgmap, before);
}

#[test]
fn a_pg_map_of_another_epoch_is_refused() {
    let map = Cluster::uniform(4, 2, 2).map();
    let (rule, before) = compute(&map, &pool(3, "rack", 400));
    let next = map.apply(&[]).unwrap();
    assert!(balance(&next, &rule, &before, &Overrides::new(rule.id()), 10).is_err());
}
