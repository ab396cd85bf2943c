//! The state machine's PG maps come from `placement`: replicas in distinct failure domains,
//! capacity-line layout kept across registrations (a new node moves only some PGs), a rule the
//! topology cannot satisfy refused by name, and the map surviving a snapshot round trip. Then
//! what volumes do on those maps: acting sets, attach and detach, and the attach epoch that
//! fences every membership change of a superseded writer.

use super::command::{Applied, Command, CommandError, CommandV1};
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

/// Registers three nodes in three racks, a pool of 3 replicas, and volume `name` of 1 GiB in it.
pub(super) fn volume_in_a_small_cluster(state: &mut ClusterState, name: &str) {
    for id in 1..=3 {
        register(state, id, &format!("r{id}"), 1);
    }
    state
        .apply(&CommandV1::CreatePool(pool(3)).into())
        .expect("pool");
    let spec = VolumeSpec {
        name: name.into(),
        pool: pool(3).name,
        size_bytes: 1 << 30,
        extent_size_bytes: crate::meta::model::EXTENT_SIZE_DEFAULT_BYTES,
        request_id: String::new(),
    };
    state
        .apply(&CommandV1::CreateVolume(spec).into())
        .expect("volume");
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
    let e = attach(&mut s, "a", "host-a", false);
    let replicas = s.pools["p3"].map.pgs[7].clone();

    s.apply(&remove("a", 7, 2, e)).expect("remove node 2");
    let a = &s.volumes["a"];
    assert_eq!(a.acting(7, &replicas).len(), 2);
    assert!(!a.acting(7, &replicas).contains(&2));
    assert_eq!(
        s.volumes["b"].acting(7, &replicas).len(),
        3,
        "another volume of the same PG keeps every replica"
    );
    let before = s.volumes["a"].clone();
    s.apply(&remove("a", 7, 2, e))
        .expect("removing twice is not an error");
    assert_eq!(s.volumes["a"], before, "and changes nothing");

    s.apply(&remove("a", 7, 1, e)).expect("remove node 1");
    let last = s.apply(&remove("a", 7, 3, e));
    assert!(
        matches!(last, Err(CommandError::FailedPrecondition(_))),
        "the last current replica stays: {last:?}"
    );
    let absent = s.apply(&remove("a", 1_000, 1, e));
    assert!(
        matches!(absent, Err(CommandError::InvalidArgument(_))),
        "{absent:?}"
    );

    // The writer reports the rebuild of node 2's copy; restoring it clears the report.
    s.apply(&report("a", 7, 2, 4 << 20, e))
        .expect("progress of a stale replica");
    assert_eq!(s.volumes["a"].rebuilding.len(), 1);
    s.apply(&report("a", 7, 2, 8 << 20, e))
        .expect("progress replaces the last report");
    assert_eq!(s.volumes["a"].rebuilding[0].done_bytes, 8 << 20);
    assert!(matches!(
        s.apply(&report("a", 7, 3, 0, e)),
        Err(CommandError::FailedPrecondition(_))
    ));
    assert!(matches!(
        s.apply(&report("a", 7, 2, 9 << 20, e)),
        Err(CommandError::InvalidArgument(_))
    ));

    for node in [1, 2] {
        s.apply(&restore("a", 7, node, e)).expect("restore");
    }
    assert_eq!(s.volumes["a"].acting(7, &replicas).len(), 3);
    assert!(s.volumes["a"].stale.is_empty());
    assert!(
        s.volumes["a"].rebuilding.is_empty(),
        "restored: no rebuild left"
    );
}

/// The failure the fence exists for: the rebuild agent resyncs an idle volume, a gateway
/// attaches (the agent yields, the epoch moves on) and writes; the agent's last pass, which
/// never saw those writes, must not restore its replica, or once the gateway's other replicas
/// fail the next attacher would read the behind copy alone and lose acknowledged writes.
#[test]
fn a_writer_fenced_by_a_newer_attach_changes_no_membership() {
    let mut s = three_nodes_with_volumes(&["v"]);
    let agent = format!("{REBUILD_AGENT_PREFIX}node-1");
    let old = attach(&mut s, "v", &agent, false);
    s.apply(&remove("v", 7, 2, old))
        .expect("node 2 is stale in PG 7");
    s.apply(&report("v", 7, 2, 4 << 20, old))
        .expect("the agent reports its progress");

    let new = attach(&mut s, "v", "host-b", false);
    assert_eq!(new, old + 1, "the agent yields to the gateway");

    let before = s.clone();
    for stale in [
        restore("v", 7, 2, old),
        remove("v", 7, 3, old),
        report("v", 7, 2, 8 << 20, old),
        detach("v", &agent, old),
    ] {
        match s.apply(&stale) {
            Err(CommandError::FailedPrecondition(m)) => assert_eq!(
                m,
                format!("volume v: attach epoch {old} is fenced by epoch {new}"),
                "{stale}"
            ),
            other => panic!("{stale}: want a fenced refusal, got {other:?}"),
        }
        assert_eq!(s, before, "{stale}: a fenced change changes nothing");
    }

    // The gateway's replicas fail: node 2 is still stale, so it never becomes the only copy.
    s.apply(&remove("v", 7, 1, new))
        .expect("the gateway's own changes go through");
    let last = s.apply(&remove("v", 7, 3, new));
    assert!(
        matches!(last, Err(CommandError::FailedPrecondition(ref m)) if m.contains("last current")),
        "{last:?}"
    );
    let replicas = s.pools["p3"].map.pgs[7].clone();
    assert_eq!(s.volumes["v"].acting(7, &replicas), vec![3]);

    // The gateway resyncs node 2 itself, then lets go.
    s.apply(&report("v", 7, 2, 8 << 20, new)).expect("report");
    s.apply(&restore("v", 7, 2, new)).expect("restore");
    s.apply(&detach("v", "host-b", new)).expect("detach");
    assert_eq!(s.volumes["v"].attachment, None);
    let mut acting = s.volumes["v"].acting(7, &replicas);
    acting.sort_unstable();
    assert_eq!(acting, vec![2, 3]);
}

#[test]
fn an_epoch_never_granted_is_refused_as_invalid() {
    let mut s = three_nodes_with_volumes(&["v"]);
    let never = |s: &mut ClusterState, epoch| s.apply(&remove("v", 7, 2, epoch));
    assert!(
        matches!(never(&mut s, 1), Err(CommandError::InvalidArgument(_))),
        "no attach yet"
    );
    let e = attach(&mut s, "v", "host-a", false);
    let before = s.clone();
    for epoch in [0, e + 1] {
        match never(&mut s, epoch) {
            Err(CommandError::InvalidArgument(m)) => assert!(m.contains("never granted"), "{m}"),
            other => panic!("epoch {epoch}: want InvalidArgument, got {other:?}"),
        }
        assert_eq!(s, before);
    }
    assert!(matches!(
        s.apply(&remove("nope", 7, 2, e)),
        Err(CommandError::NotFound(_))
    ));
}

#[test]
fn a_restarted_client_is_not_detached_by_its_older_attach() {
    let mut s = three_nodes_with_volumes(&["v"]);
    let first = attach(&mut s, "v", "host-a", false);
    let second = attach(&mut s, "v", "host-a", false);
    let r = s.apply(&detach("v", "host-a", first));
    assert!(
        matches!(r, Err(CommandError::FailedPrecondition(ref m)) if m.contains("fenced")),
        "{r:?}"
    );
    assert_eq!(s.volumes["v"].attachment.as_ref().unwrap().epoch, second);
    s.apply(&detach("v", "host-a", second))
        .expect("the newer attach lets go");
    assert_eq!(s.volumes["v"].attachment, None);
    s.apply(&detach("v", "host-a", second))
        .expect("a retried detach is done already");
}

/// Entries proposed before membership changes carried an epoch are still in old logs: replayed,
/// they apply as they did when they were committed, whoever holds the volume now.
#[test]
fn unfenced_membership_commands_of_old_logs_apply_as_before() {
    let mut s = three_nodes_with_volumes(&["v"]);
    attach(&mut s, "v", "host-a", false);
    attach(&mut s, "v", "host-b", true);
    let progress = RebuildProgress {
        pg: 7,
        node: 2,
        done_bytes: 0,
        total_bytes: 4 << 20,
    };
    for c in [
        CommandV1::RemoveReplica {
            volume: "v".into(),
            pg: 7,
            node: 2,
        },
        CommandV1::ReportRebuild {
            volume: "v".into(),
            progress,
        },
        CommandV1::RestoreReplica {
            volume: "v".into(),
            pg: 7,
            node: 2,
        },
        CommandV1::DetachVolume {
            name: "v".into(),
            client: "host-b".into(),
        },
    ] {
        let applied = s.apply(&c.clone().into());
        assert!(applied.is_ok(), "{c}: {applied:?}");
    }
    assert!(s.volumes["v"].stale.is_empty());
    assert_eq!(s.volumes["v"].attachment, None);
}

/// Attaches `volume` as `client` and returns the epoch granted.
fn attach(s: &mut ClusterState, volume: &str, client: &str, force: bool) -> u64 {
    let c = CommandV1::AttachVolume {
        name: volume.into(),
        client: client.into(),
        force,
    };
    match s.apply(&c.into()) {
        Ok(Applied::Attached { attachment, .. }) => attachment.epoch,
        other => panic!("attach {volume} as {client}: {other:?}"),
    }
}

fn remove(volume: &str, pg: u32, node: u64, attach_epoch: u64) -> Command {
    CommandV1::RemoveReplicaV2 {
        volume: volume.into(),
        pg,
        node,
        attach_epoch,
    }
    .into()
}

fn restore(volume: &str, pg: u32, node: u64, attach_epoch: u64) -> Command {
    CommandV1::RestoreReplicaV2 {
        volume: volume.into(),
        pg,
        node,
        attach_epoch,
    }
    .into()
}

/// Progress of node `node`'s rebuild in PG `pg`: `done_bytes` of 8 MiB.
fn report(volume: &str, pg: u32, node: u64, done_bytes: u64, attach_epoch: u64) -> Command {
    CommandV1::ReportRebuildV2 {
        volume: volume.into(),
        progress: RebuildProgress {
            pg,
            node,
            done_bytes,
            total_bytes: 8 << 20,
        },
        attach_epoch,
    }
    .into()
}

fn detach(volume: &str, client: &str, attach_epoch: u64) -> Command {
    CommandV1::DetachVolumeV2 {
        name: volume.into(),
        client: client.into(),
        attach_epoch,
    }
    .into()
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
    let e = attach(&mut s, "v", "host-a", false);
    let before = s.clone();
    assert!(matches!(
        s.apply(&detach("v", "host-b", e)),
        Err(CommandError::FailedPrecondition(_))
    ));
    assert_eq!(
        s.volumes, before.volumes,
        "a refused detach changes nothing"
    );
    s.apply(&detach("v", "host-a", e))
        .expect("the holder detaches");
    assert_eq!(s.volumes["v"].attachment, None);
    s.apply(&detach("v", "host-a", e))
        .expect("detaching an idle volume is done already");

    // The agent holds an idle volume; a host takes it without force, another agent cannot.
    let agent = format!("{REBUILD_AGENT_PREFIX}node-1");
    let epoch = attach(&mut s, "v", &agent, false);
    let other_agent = CommandV1::AttachVolume {
        name: "v".into(),
        client: format!("{REBUILD_AGENT_PREFIX}node-2"),
        force: false,
    };
    assert!(matches!(
        s.apply(&other_agent.into()),
        Err(CommandError::FailedPrecondition(_))
    ));
    assert_eq!(
        attach(&mut s, "v", "host-b", false),
        epoch + 1,
        "a host takes it over with a new epoch, which fences the agent"
    );
    let back = CommandV1::AttachVolume {
        name: "v".into(),
        client: agent,
        force: false,
    };
    assert!(matches!(
        s.apply(&back.into()),
        Err(CommandError::FailedPrecondition(_))
    ));
}
