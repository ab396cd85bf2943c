//! Residency under every path that moves data: across random topologies whose racks are
//! labelled `jurisdiction=de` or `fr`, a pool that requires `residency=de` never places a
//! replica on an `fr` node — not at creation, not when nodes go out (rebuild), drain or come
//! back, not when the balancer moves replicas, and not when racks are relabelled (a relabel
//! that would break the rule is refused and changes nothing).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::balance::{self, Budget};
use super::command::CommandV1;
use super::model::{
    DiskInfo, Location, NodeId, NodeRegistration, Participation, PoolSpec, Rule, VolumeSpec,
};
use super::state::ClusterState;
use super::state_residency::JURISDICTION;

fn node(id: NodeId, rack: u32) -> CommandV1 {
    CommandV1::RegisterNode(NodeRegistration {
        id,
        rpc_addr: format!("127.0.0.1:{}", 7000 + id),
        data_addr: String::new(),
        location: Location {
            levels: vec![
                ("rack".into(), format!("r{rack}")),
                ("host".into(), format!("h{id}")),
            ],
        },
        disks: vec![DiskInfo {
            name: "d0".into(),
            capacity_bytes: 1 << 40,
        }],
    })
}

fn label(rack: u32, jurisdiction: &str) -> CommandV1 {
    CommandV1::SetLabels {
        location: format!("rack=r{rack}"),
        labels: BTreeMap::from([(JURISDICTION.to_string(), jurisdiction.to_string())]),
    }
}

/// The rack a node registered in.
fn rack_of(s: &ClusterState, node: NodeId) -> String {
    s.nodes[&node]
        .registration
        .location
        .at("rack")
        .expect("a rack")
        .to_string()
}

fn jurisdiction_of(s: &ClusterState, node: NodeId) -> Option<String> {
    s.labels
        .get(&format!("rack={}", rack_of(s, node)))
        .and_then(|l| l.get(JURISDICTION).cloned())
}

/// Every replica placement puts in the pool (those still leaving aside) is in `de`.
fn check(s: &ClusterState, step: &str) {
    let pool = &s.pools["gold"];
    for (pg, nodes) in pool.map.pgs.iter().enumerate() {
        let leaving = pool.map.leaving.get(&(pg as u32));
        for n in nodes {
            if leaving.is_some_and(|l| l.contains(n)) {
                continue;
            }
            assert_eq!(
                jurisdiction_of(s, *n).as_deref(),
                Some("de"),
                "{step}: PG {pg} placed on node {n} in rack {}",
                rack_of(s, *n)
            );
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Out(u64),
    In(u64),
    Drain(u64),
    Undrain(u64),
    Balance(u8),
    Relabel(u32, bool),
}

fn op(nodes: u64, racks: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..=nodes).prop_map(Op::Out),
        (1..=nodes).prop_map(Op::In),
        (1..=nodes).prop_map(Op::Drain),
        (1..=nodes).prop_map(Op::Undrain),
        (1u8..8).prop_map(Op::Balance),
        (1..=racks, any::<bool>()).prop_map(|(r, de)| Op::Relabel(r, de)),
    ]
}

/// Racks 1–3 are `de`, the others `de` or `fr` at random; 1 or 2 nodes a rack.
fn topology() -> impl Strategy<Value = (Vec<bool>, Vec<u32>)> {
    (4u32..8).prop_flat_map(|racks| {
        (
            proptest::collection::vec(any::<bool>(), racks as usize - 3),
            proptest::collection::vec(1u32..=2, racks as usize),
        )
            .prop_map(|(extra, per_rack)| {
                let de: Vec<bool> = [true, true, true].into_iter().chain(extra).collect();
                (de, per_rack)
            })
    })
}

fn build(de: &[bool], per_rack: &[u32]) -> (ClusterState, u64) {
    let mut s = ClusterState::default();
    let mut id = 0;
    for (rack, count) in per_rack.iter().enumerate() {
        for _ in 0..*count {
            id += 1;
            s.apply(&node(id, rack as u32 + 1).into())
                .expect("register");
        }
    }
    for (rack, is_de) in de.iter().enumerate() {
        s.apply(&label(rack as u32 + 1, if *is_de { "de" } else { "fr" }).into())
            .expect("label");
    }
    s.apply(
        &CommandV1::CreatePool(PoolSpec {
            name: "gold".into(),
            rule: Rule {
                replicas: 3,
                min_replicas: 2,
                failure_domain: "rack".into(),
                tag_filter: vec![(JURISDICTION.into(), "de".into())],
            },
            pg_count: 32,
        })
        .into(),
    )
    .expect("a pool over three de racks");
    s.apply(
        &CommandV1::CreateVolume(VolumeSpec {
            name: "v".into(),
            pool: "gold".into(),
            size_bytes: 1 << 30,
            extent_size_bytes: 4 << 20,
            request_id: String::new(),
        })
        .into(),
    )
    .expect("a volume");
    (s, id)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn no_replica_is_placed_outside_the_residency_set(
        (de, per_rack) in topology(),
        ops in proptest::collection::vec(op(14, 7), 1..40),
    ) {
        let (mut s, nodes) = build(&de, &per_rack);
        let racks = de.len() as u32;
        check(&s, "created");
        for (i, o) in ops.iter().enumerate() {
            let command = match *o {
                Op::Out(n) | Op::In(n) | Op::Drain(n) | Op::Undrain(n) if n > nodes => continue,
                Op::Relabel(r, _) if r > racks => continue,
                Op::Out(node) => CommandV1::SetParticipation { node, participation: Participation::Out },
                Op::In(node) => CommandV1::SetParticipation { node, participation: Participation::In },
                Op::Drain(node) => CommandV1::SetDraining { node, draining: true },
                Op::Undrain(node) => CommandV1::SetDraining { node, draining: false },
                Op::Balance(moves) => {
                    let budget = Budget { moves_max: moves as usize, bytes_max: u64::MAX };
                    match balance::plan(&s, "gold", budget) {
                        Ok(plan) => CommandV1::Rebalance {
                            pool: "gold".into(),
                            pool_epoch: plan.pool_epoch,
                            moves: plan.disk_moves(),
                        },
                        Err(_) => continue,
                    }
                }
                Op::Relabel(rack, to_de) => label(rack, if to_de { "de" } else { "fr" }),
            };
            let before = s.clone();
            let outcome = s.apply(&command.clone().into());
            if outcome.is_err() {
                // A refusal changes nothing (the audit log aside, which these commands skip).
                prop_assert_eq!(&before.labels, &s.labels);
                prop_assert_eq!(&before.pools, &s.pools);
            }
            check(&s, &format!("step {i}: {command}"));
        }
    }
}

#[test]
fn a_relabel_that_would_break_residency_is_refused_naming_the_pool() {
    let (mut s, _) = build(&[true, true, true, false], &[1, 1, 1, 1]);
    let out = s.apply(&label(2, "fr").into());
    let err = out.expect_err("only two de racks would remain for three replicas");
    let text = err.to_string();
    assert!(text.contains("pool gold requires residency=de"), "{text}");
    assert_eq!(jurisdiction_of(&s, 2).as_deref(), Some("de"));
    // With a fourth de rack, the relabel goes through and moves the replicas off rack 2.
    s.apply(&label(4, "de").into()).unwrap();
    s.apply(&label(2, "fr").into()).unwrap();
    check(&s, "after moving rack 2 out");
    let placed_on_2 = s.pools["gold"]
        .map
        .pgs
        .iter()
        .enumerate()
        .any(|(pg, nodes)| {
            nodes.contains(&2)
                && !s.pools["gold"]
                    .map
                    .leaving
                    .get(&(pg as u32))
                    .is_some_and(|l| l.contains(&2))
        });
    assert!(!placed_on_2);
}
