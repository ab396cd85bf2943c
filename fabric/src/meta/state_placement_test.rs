//! The state machine's PG maps come from `placement`: replicas in distinct failure domains,
//! capacity-line layout kept across registrations (a new node moves only some PGs), a rule the
//! topology cannot satisfy refused by name, and the map surviving a snapshot round trip.

use super::command::{Applied, CommandError, CommandV1};
use super::model::{
    DiskInfo, Location, NodeRegistration, PoolSpec, RebuildProgress, Rule, VolumeSpec,
};
use super::state::{ClusterState, REBUILD_AGENT_PREFIX};

fn register(state: &mut ClusterState, id: u64, rack: &str, tib: u64) {
    let r = NodeRegistration {
        id,
        rpc_addr: format!("127.0.0.1:{}", 7000 + id),
        data_addr: String::new(),
        location: Location {
            levels: vec![("rack".into(), rack.into())],
        },
        disks: vec![DiskInfo {
            name: "data".into(),
            capacity_bytes: tib << 40,
        }],
    };
    state
        .apply(&CommandV1::RegisterNode(r).into())
        .expect("register");
}

fn pool(replicas: u32) -> PoolSpec {
    PoolSpec {
        name: format!("p{replicas}"),
        rule: Rule {
            replicas,
            min_replicas: 1,
            failure_domain: "rack".into(),
            tag_filter: vec![],
        },
        pg_count: 128,
    }
}

#[test]
fn pg_maps_follow_placement_and_new_nodes_move_only_some_pgs() {
    let mut s = ClusterState::default();
    for id in 1..=4 {
        register(&mut s, id, &format!("r{id}"), 1);
    }
    let Ok(Applied::Pool(p)) = s.apply(&CommandV1::CreatePool(pool(3)).into()) else {
        panic!("create pool");
    };
    assert_eq!(p.map.pgs.len(), 128);
    for replicas in &p.map.pgs {
        let mut racks = replicas.clone();
        racks.sort_unstable();
        racks.dedup();
        assert_eq!(racks.len(), 3, "one replica per rack: {replicas:?}");
    }
    let map_epoch = p.map.map_epoch;

    // Re-registering unchanged changes nothing.
    register(&mut s, 2, "r2", 1);
    assert_eq!(s.pools["p3"].map, p.map);

    // A fifth rack takes some PGs, and only PGs that now use it changed.
    register(&mut s, 5, "r5", 1);
    let after = &s.pools["p3"].map;
    assert!(after.map_epoch > map_epoch);
    assert_eq!(after.epoch, p.map.epoch + 1);
    let changed: Vec<usize> = (0..128).filter(|&i| after.pgs[i] != p.map.pgs[i]).collect();
    assert!(!changed.is_empty() && changed.len() < 128, "{changed:?}");
    for &i in &changed {
        assert!(after.pgs[i].contains(&5), "PG {i} moved without node 5");
    }

    // The map, with its layout, survives a snapshot round trip.
    let bytes = serde_json::to_vec(&s).unwrap();
    let back: ClusterState = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, s);
}

#[test]
fn unsatisfiable_rule_is_refused_naming_the_pool() {
    let mut s = ClusterState::default();
    match s.apply(&CommandV1::CreatePool(pool(3)).into()) {
        Err(CommandError::FailedPrecondition(m)) => assert!(m.contains("p3"), "{m}"),
        other => panic!("want FailedPrecondition, got {other:?}"),
    }
    for id in 1..=3 {
        register(&mut s, id, &format!("r{id}"), 2);
    }
    match s.apply(&CommandV1::CreatePool(pool(4)).into()) {
        Err(CommandError::FailedPrecondition(m)) => assert!(m.contains("p4"), "{m}"),
        other => panic!("want FailedPrecondition, got {other:?}"),
    }
    assert!(s.pools.is_empty());
}

#[test]
fn registrations_the_hierarchy_cannot_hold_are_refused_and_change_nothing() {
    let mut s = ClusterState::default();
    register(&mut s, 1, "r1", 1);
    let before = s.clone();
    let bad = NodeRegistration {
        id: 2,
        rpc_addr: "127.0.0.1:7002".into(),
        data_addr: String::new(),
        location: Location {
            levels: vec![("zone".into(), "z1".into())],
        },
        disks: vec![],
    };
    let r = s.apply(&CommandV1::RegisterNode(bad).into());
    assert!(matches!(r, Err(CommandError::InvalidArgument(_))), "{r:?}");
    assert_eq!(s, before);
}

#[test]
fn a_replica_that_missed_a_write_leaves_the_acting_set_until_restored() {
    let mut s = three_nodes_with_volumes(&["a", "b"]);
    let replicas = s.pools["p3"].map.pgs[7].clone();
    let remove = |node| CommandV1::RemoveReplica {
        volume: "a".into(),
        pg: 7,
        node,
    };

    s.apply(&remove(2).into()).expect("remove node 2");
    let a = &s.volumes["a"];
    assert_eq!(a.acting(7, &replicas).len(), 2);
    assert!(!a.acting(7, &replicas).contains(&2));
    assert_eq!(
        s.volumes["b"].acting(7, &replicas).len(),
        3,
        "another volume of the same PG keeps every replica"
    );
    let before = s.volumes["a"].clone();
    s.apply(&remove(2).into())
        .expect("removing twice is not an error");
    assert_eq!(s.volumes["a"], before, "and changes nothing");

    s.apply(&remove(1).into()).expect("remove node 1");
    let last = s.apply(&remove(3).into());
    assert!(
        matches!(last, Err(CommandError::FailedPrecondition(_))),
        "the last current replica stays: {last:?}"
    );
    let absent = s.apply(
        &CommandV1::RemoveReplica {
            volume: "a".into(),
            pg: 1_000,
            node: 1,
        }
        .into(),
    );
    assert!(
        matches!(absent, Err(CommandError::InvalidArgument(_))),
        "{absent:?}"
    );

    // The writer reports the rebuild of node 2's copy; restoring it clears the report.
    let report = |node, done| CommandV1::ReportRebuild {
        volume: "a".into(),
        progress: RebuildProgress {
            pg: 7,
            node,
            done_bytes: done,
            total_bytes: 8 << 20,
        },
    };
    s.apply(&report(2, 4 << 20).into())
        .expect("progress of a stale replica");
    assert_eq!(s.volumes["a"].rebuilding.len(), 1);
    s.apply(&report(2, 8 << 20).into())
        .expect("progress replaces the last report");
    assert_eq!(s.volumes["a"].rebuilding[0].done_bytes, 8 << 20);
    assert!(matches!(
        s.apply(&report(3, 0).into()),
        Err(CommandError::FailedPrecondition(_))
    ));
    assert!(matches!(
        s.apply(&report(2, 9 << 20).into()),
        Err(CommandError::InvalidArgument(_))
    ));

    for node in [1, 2] {
        s.apply(
            &CommandV1::RestoreReplica {
                volume: "a".into(),
                pg: 7,
                node,
            }
            .into(),
        )
        .expect("restore");
    }
    assert_eq!(s.volumes["a"].acting(7, &replicas).len(), 3);
    assert!(s.volumes["a"].stale.is_empty());
    assert!(
        s.volumes["a"].rebuilding.is_empty(),
        "restored: no rebuild left"
    );
}

/// Three nodes in three racks, pool `p3` (3 replicas) and 1 GiB volumes named `volumes`.
fn three_nodes_with_volumes(volumes: &[&str]) -> ClusterState {
    let mut s = ClusterState::default();
    for id in 1..=3 {
        register(&mut s, id, &format!("r{id}"), 1);
    }
    s.apply(&CommandV1::CreatePool(pool(3)).into())
        .expect("create pool");
    for name in volumes {
        let spec = VolumeSpec {
            name: (*name).into(),
            pool: "p3".into(),
            size_bytes: 1 << 30,
            extent_size_bytes: 4 << 20,
            request_id: String::new(),
        };
        s.apply(&CommandV1::CreateVolume(spec).into())
            .expect("create volume");
    }
    s
}

#[test]
fn a_retried_request_is_applied_once_and_answered_alike() {
    let mut s = three_nodes_with_volumes(&["v", "w"]);
    let once = |request_id: &str, command: CommandV1| {
        CommandV1::Once {
            request_id: request_id.into(),
            command: Box::new(command),
        }
        .into()
    };
    let attach = |force| CommandV1::AttachVolume {
        name: "v".into(),
        client: "host-a".into(),
        force,
    };

    // An attach retried under the same id grants one epoch, not two.
    let first = s.apply(&once("req-1", attach(false))).expect("attach");
    let retried = s
        .apply(&once("req-1", attach(false)))
        .expect("retried attach");
    assert_eq!(first, retried, "the retry gets the first answer");
    assert_eq!(s.volumes["v"].attach_epoch, 1);
    s.apply(&once("req-2", attach(true)))
        .expect("a new request");
    assert_eq!(s.volumes["v"].attach_epoch, 2);

    // A delete retried after it happened succeeds again instead of answering NOT_FOUND.
    let delete = || CommandV1::DeleteVolume { name: "w".into() };
    assert_eq!(s.apply(&once("req-3", delete())), Ok(Applied::Deleted));
    assert_eq!(s.apply(&once("req-3", delete())), Ok(Applied::Deleted));
    assert!(matches!(
        s.apply(&delete().into()),
        Err(CommandError::NotFound(_))
    ));

    // A refused request stays refused on retry, and an empty id is refused.
    let take_over = || CommandV1::AttachVolume {
        name: "v".into(),
        client: "host-b".into(),
        force: false,
    };
    let refused = s.apply(&once("req-4", take_over()));
    assert!(
        matches!(refused, Err(CommandError::FailedPrecondition(_))),
        "{refused:?}"
    );
    assert_eq!(s.apply(&once("req-4", take_over())), refused);
    assert!(matches!(
        s.apply(&once("", attach(false))),
        Err(CommandError::InvalidArgument(_))
    ));
}

#[test]
fn detach_lets_go_only_for_the_holder_and_the_rebuild_agent_yields_to_anyone_else() {
    let mut s = three_nodes_with_volumes(&["v"]);
    let attach = |client: &str| {
        CommandV1::AttachVolume {
            name: "v".into(),
            client: client.into(),
            force: false,
        }
        .into()
    };
    let detach = |client: &str| {
        CommandV1::DetachVolume {
            name: "v".into(),
            client: client.into(),
        }
        .into()
    };

    s.apply(&attach("host-a")).expect("attach");
    let before = s.clone();
    assert!(matches!(
        s.apply(&detach("host-b")),
        Err(CommandError::FailedPrecondition(_))
    ));
    assert_eq!(
        s.volumes, before.volumes,
        "a refused detach changes nothing"
    );
    s.apply(&detach("host-a")).expect("the holder detaches");
    assert_eq!(s.volumes["v"].attachment, None);
    s.apply(&detach("host-a"))
        .expect("detaching an idle volume is done already");

    // The agent holds an idle volume; a host takes it without force, another agent cannot.
    let agent = format!("{REBUILD_AGENT_PREFIX}node-1");
    s.apply(&attach(&agent)).expect("the agent attaches");
    assert!(matches!(
        s.apply(&attach(&format!("{REBUILD_AGENT_PREFIX}node-2"))),
        Err(CommandError::FailedPrecondition(_))
    ));
    let epoch = s.volumes["v"].attach_epoch;
    s.apply(&attach("host-b")).expect("a host takes it over");
    assert_eq!(
        s.volumes["v"].attach_epoch,
        epoch + 1,
        "with a new epoch, which fences the agent"
    );
    assert!(matches!(
        s.apply(&attach(&agent)),
        Err(CommandError::FailedPrecondition(_))
    ));
}
