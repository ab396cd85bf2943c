//! Properties of `ClusterState::apply` over every kind of command. A run is a list of picks,
//! each turned into a command against the state it is applied to, so that most commands name
//! existing nodes, volumes, PGs and current attach epochs, and a share is wrong on purpose (an
//! older epoch, an unknown node, a shrink, the last current replica). After every apply:
//!
//! - a volume's stale replicas of a PG are replicas of that PG, and every PG of its pool keeps
//!   at least one current replica;
//! - what is being rebuilt is stale;
//! - a volume's attach epoch never goes down;
//! - a refused command changes nothing (a `Once` only remembers its outcome), and a retried
//!   request changes nothing and gets its first answer;
//! - a membership change under an attach epoch older than the volume's is refused as fenced.
//!
//! proptest prints the picks of a failure, shrunk; a failure found this way becomes a pinned
//! test below.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use super::balance::{self, Budget};
use super::command::{Command, CommandError, CommandV1, FENCED_WORDS, Outcome, fencing_epoch};
use super::model::{
    DiskInfo, Health, Location, NodeId, NodeRegistration, Participation, PoolSpec, RebuildProgress,
    Rule, VolumeSpec,
};
use super::service::watch;
use super::state::{ClusterState, REBUILD_AGENT_PREFIX};
use super::watcher::{ClusterView, Follower};

/// Every kind of plain command; `Once` wraps one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Register,
    Heartbeat,
    CreatePool,
    CreateVolume,
    Resize,
    Delete,
    Attach,
    Detach,
    DetachV2,
    Remove,
    RemoveV2,
    Restore,
    RestoreV2,
    Report,
    ReportV2,
    SetParticipation,
    DeletePool,
    SetHealth,
    SetDraining,
    Rebalance,
    Once,
}

const PLAIN: [Kind; 20] = [
    Kind::Register,
    Kind::Heartbeat,
    Kind::CreatePool,
    Kind::CreateVolume,
    Kind::Resize,
    Kind::Delete,
    Kind::Attach,
    Kind::Detach,
    Kind::DetachV2,
    Kind::Remove,
    Kind::RemoveV2,
    Kind::Restore,
    Kind::RestoreV2,
    Kind::Report,
    Kind::ReportV2,
    Kind::SetParticipation,
    Kind::DeletePool,
    Kind::SetHealth,
    Kind::SetDraining,
    Kind::Rebalance,
];

/// One step of a run: a kind, three numbers that choose among what the state holds, and
/// whether the command is made wrong on purpose.
#[derive(Clone, Debug)]
struct Pick {
    kind: Kind,
    a: u32,
    b: u32,
    c: u32,
    flawed: bool,
}

const NODE_IDS: u64 = 6;
const RACKS: u32 = 4;
const CLIENTS: [&str; 3] = ["x", "y", "rebuild-agent@n1"];
const _: () = assert!(CLIENTS[2].len() > REBUILD_AGENT_PREFIX.len());

fn pick_of(kind: impl Strategy<Value = Kind>) -> impl Strategy<Value = Pick> {
    (kind, any::<u32>(), any::<u32>(), any::<u32>(), 0u32..100).prop_map(|(kind, a, b, c, flaw)| {
        Pick {
            kind,
            a,
            b,
            c,
            flawed: flaw < 15,
        }
    })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Register),
        2 => Just(Kind::Heartbeat),
        1 => Just(Kind::CreatePool),
        3 => Just(Kind::CreateVolume),
        1 => Just(Kind::Resize),
        1 => Just(Kind::Delete),
        4 => Just(Kind::Attach),
        1 => Just(Kind::Detach),
        2 => Just(Kind::DetachV2),
        1 => Just(Kind::Remove),
        6 => Just(Kind::RemoveV2),
        1 => Just(Kind::Restore),
        4 => Just(Kind::RestoreV2),
        1 => Just(Kind::Report),
        3 => Just(Kind::ReportV2),
        3 => Just(Kind::SetParticipation),
        1 => Just(Kind::DeletePool),
        2 => Just(Kind::SetHealth),
        2 => Just(Kind::SetDraining),
        2 => Just(Kind::Rebalance),
        3 => Just(Kind::Once),
    ]
}

/// A run: nodes register, pools and volumes are created first, then anything goes.
fn run_picks(len: usize) -> impl Strategy<Value = Vec<Pick>> {
    (
        prop::collection::vec(pick_of(Just(Kind::Register)), 3..7),
        prop::collection::vec(pick_of(Just(Kind::CreatePool)), 1..3),
        prop::collection::vec(pick_of(Just(Kind::CreateVolume)), 1..4),
        prop::collection::vec(pick_of(kind()), 0..=len),
    )
        .prop_map(|(mut a, b, c, d)| {
            a.extend(b);
            a.extend(c);
            a.extend(d);
            a
        })
}

fn nth<T: Clone>(items: &[T], i: u32) -> Option<T> {
    (!items.is_empty()).then(|| items[i as usize % items.len()].clone())
}

fn registration(p: &Pick) -> NodeRegistration {
    let id = 1 + u64::from(p.a) % NODE_IDS;
    // Mostly a node's own rack; sometimes it moves, loses its disk or gains one.
    let rack = if p.b.is_multiple_of(5) {
        p.b % RACKS
    } else {
        id as u32 % RACKS
    };
    let disks = match p.c % 8 {
        0 => 0,
        1 => 2,
        _ => 1,
    };
    let mut r = NodeRegistration {
        id,
        rpc_addr: format!("127.0.0.1:{}", 7000 + id),
        data_addr: String::new(),
        location: Location {
            levels: vec![
                ("rack".into(), format!("r{rack}")),
                ("host".into(), format!("h{id}")),
            ],
        },
        disks: (0..disks)
            .map(|d| DiskInfo {
                name: format!("d{d}"),
                capacity_bytes: (1 + u64::from(p.c / 8 + d) % 3) << 40,
            })
            .collect(),
    };
    if p.flawed {
        match p.b % 2 {
            0 => r.location.levels = vec![("zone".into(), "z1".into())],
            _ => {
                r.disks = vec![DiskInfo {
                    name: "d0".into(),
                    capacity_bytes: 0,
                }]
            }
        }
    }
    r
}

/// A (volume, PG, node) of a volume whose pool has a map. `stale` prefers a stale replica, else
/// a current one whose removal leaves another;
/// `attached` prefers a volume that was attached at least once. Flawed: a node outside the PG
/// or a PG the pool does not have.
fn replica_target(s: &ClusterState, p: &Pick, stale: bool, attached: bool) -> (String, u32, u64) {
    let Some(name) = volume_of(s, p, attached) else {
        return ("v9".into(), 0, 1);
    };
    let v = &s.volumes[&name];
    let pgs = &s.pools[&v.spec.pool].map.pgs;
    let candidates: Vec<(u32, u64)> = if stale {
        v.stale
            .iter()
            .flat_map(|(pg, nodes)| nodes.iter().map(|n| (*pg, *n)))
            .collect()
    } else {
        // Current replicas a removal may take (another current one stays).
        (0..pgs.len() as u32)
            .flat_map(|pg| {
                let acting = v.acting(pg, &pgs[pg as usize]);
                let spare = acting.len() > 1;
                acting
                    .into_iter()
                    .filter(move |_| spare)
                    .map(move |n| (pg, n))
            })
            .collect()
    };
    let (mut pg, mut node) = match nth(&candidates, p.b) {
        Some(t) if !p.c.is_multiple_of(5) => t,
        _ => {
            let pg = p.b % pgs.len() as u32;
            (pg, nth(&pgs[pg as usize], p.c).unwrap_or(1))
        }
    };
    if p.flawed {
        match p.c % 2 {
            0 => {
                node = (1..=NODE_IDS + 1)
                    .find(|n| !pgs[pg as usize].contains(n))
                    .unwrap()
            }
            _ => pg = pgs.len() as u32 + p.c % 3,
        }
    }
    (name, pg, node)
}

/// A volume; with `attached`, preferably one attached before (twice before, for a flawed pick,
/// so that it has an older epoch to carry).
fn volume_of(s: &ClusterState, p: &Pick, attached: bool) -> Option<String> {
    let least = match (attached, p.flawed) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    };
    let mut volumes: Vec<&String> = s
        .volumes
        .values()
        .filter(|v| v.attach_epoch >= least)
        .map(|v| &v.spec.name)
        .collect();
    if volumes.is_empty() {
        volumes = s.volumes.keys().collect();
    }
    nth(&volumes, p.a).cloned()
}

/// The attach epoch a V2 command of `volume` carries: the current one, or when flawed an older
/// one, one never granted, or 0.
fn attach_epoch(s: &ClusterState, p: &Pick, volume: &str) -> u64 {
    let current = s.volumes.get(volume).map_or(1, |v| v.attach_epoch);
    if !p.flawed {
        return current;
    }
    match p.a % 5 {
        0..=2 if current > 1 => 1 + u64::from(p.b) % (current - 1),
        3 => current + 1,
        _ => 0,
    }
}

fn holder(s: &ClusterState, p: &Pick, volume: &str) -> String {
    match s.volumes.get(volume).and_then(|v| v.attachment.as_ref()) {
        Some(a) if !p.flawed => a.client.clone(),
        _ => nth(&CLIENTS, p.b).unwrap().to_string(),
    }
}

fn progress(p: &Pick, pg: u32, node: u64) -> RebuildProgress {
    let total = 4u64 << 20;
    RebuildProgress {
        pg,
        node,
        done_bytes: if p.flawed && p.b.is_multiple_of(3) {
            total + 1
        } else {
            u64::from(p.b) % (total + 1)
        },
        total_bytes: total,
    }
}

/// A balancer plan for a pool, within a budget of a few moves; flawed, one made at an older
/// map epoch or with a move onto a disk the PG already uses.
fn rebalance(s: &ClusterState, p: &Pick) -> CommandV1 {
    let pool = nth(&["p", "q"], p.a).unwrap().to_string();
    let budget = Budget {
        moves_max: 1 + p.b as usize % 8,
        bytes_max: u64::MAX,
    };
    let Ok(plan) = balance::plan(s, &pool, budget) else {
        return CommandV1::Rebalance {
            pool,
            pool_epoch: 0,
            moves: Vec::new(),
        };
    };
    let mut moves = plan.disk_moves();
    let mut pool_epoch = plan.pool_epoch;
    if p.flawed {
        match (p.c % 2, moves.first_mut()) {
            (0, Some(m)) => m.to_disk = s.pools[&pool].map.disks[m.pg as usize][0],
            _ => pool_epoch = pool_epoch.saturating_sub(1),
        }
    }
    CommandV1::Rebalance {
        pool,
        pool_epoch,
        moves,
    }
}

/// The command `p` makes against `s`.
fn command(s: &ClusterState, p: &Pick) -> CommandV1 {
    command_of(s, p, p.kind)
}

fn command_of(s: &ClusterState, p: &Pick, kind: Kind) -> CommandV1 {
    let nodes: Vec<NodeId> = s.nodes.keys().copied().collect();
    let node = || match nth(&nodes, p.a) {
        Some(n) if !p.flawed => n,
        _ => 100 + u64::from(p.a % 3),
    };
    let volumes: Vec<String> = s.volumes.keys().cloned().collect();
    let volume = || match nth(&volumes, p.a) {
        Some(v) if !p.flawed || p.b.is_multiple_of(2) => v,
        _ => format!("v{}", p.a % 5),
    };
    match kind {
        Kind::Register => CommandV1::RegisterNode(registration(p)),
        Kind::Heartbeat => CommandV1::Heartbeat {
            node: node(),
            at_ms: u64::from(p.b % 1000) * 1000,
        },
        Kind::CreatePool => {
            let replicas = [3, 3, 2, 1][p.b as usize % 4];
            CommandV1::CreatePool(PoolSpec {
                name: nth(&["p", "q"], p.a).unwrap().into(),
                rule: Rule {
                    replicas: if p.flawed {
                        [0, 9][p.c as usize % 2]
                    } else {
                        replicas
                    },
                    min_replicas: 1,
                    failure_domain: nth(&["rack", "host"], p.c).unwrap().into(),
                    tag_filter: vec![],
                },
                pg_count: 1 + p.c % 12,
            })
        }
        Kind::CreateVolume => {
            let pools: Vec<String> = s.pools.keys().cloned().collect();
            let blocks = 1 + u64::from(p.c % 4);
            CommandV1::CreateVolume(VolumeSpec {
                name: format!("v{}", p.a % 5),
                pool: match nth(&pools, p.b) {
                    Some(pool) if !p.flawed || p.c.is_multiple_of(2) => pool,
                    _ => "nope".into(),
                },
                size_bytes: if p.flawed {
                    blocks * 4096 + 1
                } else {
                    blocks * 4096
                },
                extent_size_bytes: 4 << 20,
                request_id: if p.b.is_multiple_of(3) {
                    format!("create-{}", p.a % 5)
                } else {
                    String::new()
                },
            })
        }
        Kind::Resize => {
            let name = volume();
            let size = s.volumes.get(&name).map_or(4096, |v| v.spec.size_bytes);
            CommandV1::ResizeVolume {
                size_bytes: if p.flawed {
                    size.saturating_sub(4096)
                } else {
                    size + 4096 * u64::from(p.c % 3)
                },
                name,
            }
        }
        Kind::Delete => CommandV1::DeleteVolume { name: volume() },
        Kind::Attach => CommandV1::AttachVolume {
            name: volume(),
            client: if p.flawed {
                String::new()
            } else {
                nth(&CLIENTS, p.b).unwrap().into()
            },
            force: p.c.is_multiple_of(4),
        },
        Kind::Detach => {
            let name = volume();
            CommandV1::DetachVolume {
                client: holder(s, p, &name),
                name,
            }
        }
        Kind::DetachV2 => {
            let name = volume_of(s, p, true).unwrap_or_else(|| "v9".into());
            CommandV1::DetachVolumeV2 {
                client: holder(s, p, &name),
                attach_epoch: attach_epoch(s, p, &name),
                name,
            }
        }
        Kind::Remove => {
            let (volume, pg, node) = replica_target(s, p, false, false);
            CommandV1::RemoveReplica { volume, pg, node }
        }
        Kind::RemoveV2 => {
            let (volume, pg, node) = replica_target(s, p, false, true);
            CommandV1::RemoveReplicaV2 {
                attach_epoch: attach_epoch(s, p, &volume),
                volume,
                pg,
                node,
            }
        }
        Kind::Restore => {
            let (volume, pg, node) = replica_target(s, p, true, false);
            CommandV1::RestoreReplica { volume, pg, node }
        }
        Kind::RestoreV2 => {
            let (volume, pg, node) = replica_target(s, p, true, true);
            CommandV1::RestoreReplicaV2 {
                attach_epoch: attach_epoch(s, p, &volume),
                volume,
                pg,
                node,
            }
        }
        Kind::Report => {
            let (volume, pg, node) = replica_target(s, p, true, false);
            CommandV1::ReportRebuild {
                volume,
                progress: progress(p, pg, node),
            }
        }
        Kind::ReportV2 => {
            let (volume, pg, node) = replica_target(s, p, true, true);
            CommandV1::ReportRebuildV2 {
                attach_epoch: attach_epoch(s, p, &volume),
                volume,
                progress: progress(p, pg, node),
            }
        }
        Kind::SetParticipation => CommandV1::SetParticipation {
            node: node(),
            participation: if p.b.is_multiple_of(3) {
                Participation::In
            } else {
                Participation::Out
            },
        },
        Kind::SetHealth => CommandV1::SetHealth {
            node: node(),
            health: if p.b.is_multiple_of(2) {
                Health::Up
            } else {
                Health::Down
            },
        },
        Kind::SetDraining => CommandV1::SetDraining {
            node: node(),
            draining: !p.b.is_multiple_of(3),
        },
        Kind::Rebalance => rebalance(s, p),
        Kind::DeletePool => CommandV1::DeletePool {
            name: if p.flawed {
                "nope".into()
            } else {
                nth(&["p", "q"], p.a).unwrap().into()
            },
        },
        Kind::Once => {
            let inner = command_of(s, p, PLAIN[p.c as usize % PLAIN.len()]);
            let (request_id, command) = match (p.flawed, p.b % 2) {
                (true, 0) => (String::new(), inner),
                (true, _) => (
                    "nested".into(),
                    CommandV1::Once {
                        request_id: "inner".into(),
                        command: Box::new(inner),
                    },
                ),
                (false, _) => (format!("req-{}", p.b % 8), inner),
            };
            CommandV1::Once {
                request_id,
                command: Box::new(command),
            }
        }
    }
}

/// The epoch a membership change of `c` is fenced by in `s`, if its epoch is an older one.
fn fenced_by(s: &ClusterState, c: &CommandV1) -> Option<u64> {
    let (volume, epoch) = match c {
        CommandV1::RemoveReplicaV2 {
            volume,
            attach_epoch,
            ..
        }
        | CommandV1::RestoreReplicaV2 {
            volume,
            attach_epoch,
            ..
        }
        | CommandV1::ReportRebuildV2 {
            volume,
            attach_epoch,
            ..
        }
        | CommandV1::DetachVolumeV2 {
            name: volume,
            attach_epoch,
            ..
        } => (volume, *attach_epoch),
        _ => return None,
    };
    let current = s.volumes.get(volume)?.attach_epoch;
    (epoch > 0 && epoch < current).then_some(current)
}

/// Checks the invariants of the state itself.
fn check_state(s: &ClusterState, step: &str) {
    for (name, pool) in &s.pools {
        let map = &pool.map;
        assert_eq!(map.pgs.len(), map.disks.len(), "{step}: pool {name}");
        for (pg, replicas) in map.pgs.iter().enumerate() {
            let pg = pg as u32;
            assert_eq!(
                replicas.len(),
                map.disks[pg as usize].len(),
                "{step}: {name}/{pg}"
            );
            let mut distinct = replicas.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                replicas.len(),
                "{step}: {name}/{pg} {replicas:?}"
            );
            let Some(leaving) = map.leaving.get(&pg) else {
                continue;
            };
            let targets = map.targets(pg);
            assert!(
                !leaving.is_empty(),
                "{step}: {name}/{pg}: empty leaving set"
            );
            assert_eq!(
                &replicas[targets.len()..]
                    .iter()
                    .copied()
                    .collect::<std::collections::BTreeSet<_>>(),
                leaving,
                "{step}: {name}/{pg}: leaving replicas follow the targets"
            );
            // A replica leaves once its successors are current: a leaving one with nothing to
            // wait for should have gone.
            let waiting = s.volumes.values().any(|v| {
                v.spec.pool == *name
                    && v.stale
                        .get(&pg)
                        .is_some_and(|st| targets.iter().any(|n| st.contains(n)))
            });
            assert!(
                waiting,
                "{step}: {name}/{pg}: {leaving:?} leave but nothing is stale"
            );
        }
    }
    for (name, v) in &s.volumes {
        let pool = s
            .pools
            .get(&v.spec.pool)
            .unwrap_or_else(|| panic!("{step}: volume {name} has no pool {}", v.spec.pool));
        let pgs = &pool.map.pgs;
        for (pg, nodes) in &v.stale {
            let replicas = pgs.get(*pg as usize).unwrap_or_else(|| {
                panic!("{step}: volume {name} has stale replicas in PG {pg}, which is not there")
            });
            assert!(!nodes.is_empty(), "{step}: volume {name}: empty stale set");
            for n in nodes {
                assert!(
                    replicas.contains(n),
                    "{step}: volume {name}: stale node {n} is no replica of PG {pg} {replicas:?}"
                );
            }
        }
        for (pg, replicas) in pgs.iter().enumerate() {
            assert!(
                !v.acting(pg as u32, replicas).is_empty(),
                "{step}: volume {name}: PG {pg} {replicas:?} has no current replica (stale {:?})",
                v.stale.get(&(pg as u32))
            );
        }
        let mut rebuilding: Vec<(u32, u64)> = Vec::new();
        for r in &v.rebuilding {
            assert!(
                v.stale.get(&r.pg).is_some_and(|s| s.contains(&r.node)),
                "{step}: volume {name}: node {} rebuilds in PG {} but is not stale",
                r.node,
                r.pg
            );
            assert!(r.done_bytes <= r.total_bytes, "{step}: {r:?}");
            rebuilding.push((r.pg, r.node));
        }
        rebuilding.sort_unstable();
        rebuilding.dedup();
        assert_eq!(rebuilding.len(), v.rebuilding.len(), "{step}: {name}");
    }
}

/// What a run reached: how often each kind was applied and refused, and how many changes
/// were refused as fenced.
#[derive(Debug, Default)]
struct Coverage {
    kinds: BTreeMap<Kind, (u32, u32)>,
    fenced: u32,
}

/// Applies `picks` in turn, checking every property after every apply.
fn run(picks: &[Pick]) -> Coverage {
    let mut s = ClusterState::default();
    let mut coverage = Coverage::default();
    // Highest attach epoch seen per volume id (a name may be reused by another volume).
    let mut epochs: BTreeMap<u64, u64> = BTreeMap::new();
    // First outcome of every request id.
    let mut requests: BTreeMap<String, Outcome> = BTreeMap::new();
    // A watch subscriber that applies every delta.
    let mut view = ClusterView::default();
    for (i, p) in picks.iter().enumerate() {
        let c = command(&s, p);
        let step = format!("step {i} ({p:?}): {c:?}");
        let before = s.clone();
        let outcome = s.apply(&Command::V1(c.clone()));

        let (plain, replay) = match &c {
            CommandV1::Once {
                request_id,
                command,
            } if !request_id.is_empty() => (command.as_ref(), requests.get(request_id)),
            c => (c, None),
        };
        if let Some(first) = replay {
            assert_eq!(&outcome, first, "{step}: a retry answers like its request");
            assert_eq!(s, before, "{step}: a retry changes nothing");
        } else if let Some(current) = fenced_by(&before, plain) {
            match &outcome {
                Err(CommandError::FailedPrecondition(m)) => {
                    assert!(m.contains(FENCED_WORDS), "{step}: {m}");
                    assert_eq!(fencing_epoch(m), Some(current), "{step}: {m}");
                    coverage.fenced += 1;
                }
                other => panic!("{step}: want a fenced refusal, got {other:?}"),
            }
        }
        if outcome.is_err() {
            let mut unchanged = s.clone();
            if matches!(c, CommandV1::Once { .. }) {
                unchanged.requests = before.requests.clone();
            }
            assert_eq!(
                unchanged, before,
                "{step}: refused ({outcome:?}) yet changed"
            );
        }
        if let CommandV1::Once { request_id, .. } = &c
            && !request_id.is_empty()
        {
            requests
                .entry(request_id.clone())
                .or_insert_with(|| outcome.clone());
        }

        check_state(&s, &step);
        follow_watch(&s, &mut view, &step);
        for v in s.volumes.values() {
            let seen = epochs.entry(v.id).or_default();
            assert!(
                v.attach_epoch >= *seen,
                "{step}: volume {} (id {}): attach epoch went from {seen} to {}",
                v.spec.name,
                v.id,
                v.attach_epoch
            );
            *seen = v.attach_epoch;
        }
        let counts = coverage.kinds.entry(p.kind).or_default();
        if outcome.is_ok() {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    coverage
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// 48 runs of up to 200 commands: some 5,000 applies.
    #[test]
    fn every_apply_keeps_the_state_machine_invariants(picks in run_picks(200)) {
        run(&picks);
    }
}

/// A subscriber that follows the watch deltas holds what a new subscriber's full state holds.
fn follow_watch(s: &ClusterState, view: &mut ClusterView, step: &str) {
    let have = (view.epoch > 0).then_some(view.epoch);
    if let Some(event) = watch::event(s, 0, have, &watch::Filter::ALL) {
        assert!(
            have.is_none() || !event.full,
            "{step}: a full state where a delta fits"
        );
        assert!(
            view.apply(event),
            "{step}: the delta does not fit its subscriber"
        );
    }
    let mut fresh = ClusterView::default();
    let full = watch::event(s, 0, None, &watch::Filter::ALL).expect("a full state");
    assert!(fresh.apply(full));
    assert_eq!(*view, fresh, "{step}: the deltas lost or kept a change");
}

/// The generator is worth what it reaches: over a few fixed runs every kind of command is
/// applied at least once and refused at least once.
#[test]
fn the_generated_runs_apply_and_refuse_every_kind_of_command() {
    let mut runner = TestRunner::deterministic();
    let mut total = Coverage::default();
    for _ in 0..16 {
        let picks = run_picks(200)
            .new_tree(&mut runner)
            .expect("generate a run")
            .current();
        let run = run(&picks);
        for (kind, (ok, refused)) in run.kinds {
            let t = total.kinds.entry(kind).or_default();
            t.0 += ok;
            t.1 += refused;
        }
        total.fenced += run.fenced;
    }
    for kind in PLAIN.iter().chain([&Kind::Once]) {
        let (ok, refused) = total.kinds.get(kind).copied().unwrap_or_default();
        assert!(
            ok > 0 && refused > 0,
            "{kind:?}: applied {ok}, refused {refused} ({total:?})"
        );
    }
    assert!(total.fenced >= 5, "{total:?}");
}

// Pinned from failures of the property above.

fn node(id: u64, rack: u32) -> CommandV1 {
    CommandV1::RegisterNode(NodeRegistration {
        id,
        rpc_addr: format!("127.0.0.1:{}", 7000 + id),
        data_addr: String::new(),
        location: Location {
            levels: vec![("rack".into(), format!("r{rack}"))],
        },
        disks: vec![DiskInfo {
            name: "d0".into(),
            capacity_bytes: 1 << 40,
        }],
    })
}

/// `nodes` nodes, one a rack, pool `p` of `replicas` replicas over 32 PGs and volume `v`.
fn cluster(nodes: u64, replicas: u32) -> ClusterState {
    let mut s = ClusterState::default();
    let mut apply = |c: CommandV1| s.apply(&c.into()).expect("set up");
    for id in 1..=nodes {
        apply(node(id, id as u32));
    }
    apply(CommandV1::CreatePool(PoolSpec {
        name: "p".into(),
        rule: Rule {
            replicas,
            min_replicas: 1,
            failure_domain: "rack".into(),
            tag_filter: vec![],
        },
        pg_count: 32,
    }));
    apply(CommandV1::CreateVolume(VolumeSpec {
        name: "v".into(),
        pool: "p".into(),
        size_bytes: 1 << 30,
        extent_size_bytes: 4 << 20,
        request_id: String::new(),
    }));
    s
}

/// `s` with volume `v` attached to client `x` (attach epoch 1).
fn attached(mut s: ClusterState) -> ClusterState {
    let attach = CommandV1::AttachVolume {
        name: "v".into(),
        client: "x".into(),
        force: false,
    };
    s.apply(&attach.into()).expect("attach");
    s
}

fn refused_as_leaving_no_current_replica(outcome: Outcome) {
    match outcome {
        Err(CommandError::FailedPrecondition(m)) => {
            assert!(m.contains("none of its current replicas"), "{m}")
        }
        other => panic!("want a refusal, got {other:?}"),
    }
}

/// Marking out the node with the last current replica of a PG used to move the PG onto a new
/// node (stale, as every arrival) beside the stale ones: no replica of the PG held the data.
#[test]
fn marking_out_the_last_current_replica_of_a_pg_is_refused_until_another_is_restored() {
    let mut s = attached(cluster(4, 3));
    let replicas = s.pools["p"].map.pgs[5].clone();
    let membership = |restore: bool, node: u64| {
        let (volume, pg, attach_epoch) = ("v".to_string(), 5, 1);
        if restore {
            CommandV1::RestoreReplicaV2 {
                volume,
                pg,
                node,
                attach_epoch,
            }
        } else {
            CommandV1::RemoveReplicaV2 {
                volume,
                pg,
                node,
                attach_epoch,
            }
        }
    };
    for n in &replicas[1..] {
        s.apply(&membership(false, *n).into()).expect("remove");
    }
    let out = |node| CommandV1::SetParticipation {
        node,
        participation: Participation::Out,
    };

    let before = s.clone();
    refused_as_leaving_no_current_replica(s.apply(&out(replicas[0]).into()));
    assert_eq!(s, before, "a refused mark-out changes nothing");

    s.apply(&membership(true, replicas[1]).into())
        .expect("restore");
    s.apply(&out(replicas[0]).into())
        .expect("another current replica stays");
    let now = &s.pools["p"].map.pgs[5];
    assert!(!now.contains(&replicas[0]), "{now:?}");
    assert_eq!(s.volumes["v"].acting(5, now), vec![replicas[1]]);
    check_state(&s, "after the mark-out");
}

/// A pool goes only once it holds no volume; a refused delete changes nothing.
#[test]
fn a_pool_is_deleted_only_when_it_holds_no_volume() {
    let mut s = cluster(1, 1);
    let before = s.clone();
    let delete = || CommandV1::DeletePool { name: "p".into() };
    match s.apply(&delete().into()) {
        Err(CommandError::FailedPrecondition(m)) => {
            assert!(m.contains("holds 1 volumes (v)"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s, before, "a refused delete changes nothing");
    let missing = CommandV1::DeletePool {
        name: "none".into(),
    };
    assert!(matches!(
        s.apply(&missing.into()),
        Err(CommandError::NotFound(_))
    ));
    s.apply(&CommandV1::DeleteVolume { name: "v".into() }.into())
        .expect("delete the volume");
    assert_eq!(
        s.apply(&delete().into()),
        Ok(crate::meta::command::Applied::Deleted)
    );
    assert!(s.pools.is_empty());
}

/// In a pool of one replica, a node that joins takes PGs whose only copy would stay behind.
/// The copy stays in the PG as leaving, serving, until the newcomer is current; without
/// volumes there is nothing to hand over and the PG moves at once.
#[test]
fn a_node_joining_a_one_replica_pool_keeps_the_only_copy_until_its_successor_is_current() {
    let mut s = cluster(1, 1);
    s.apply(&node(2, 2).into()).expect("join");
    check_state(&s, "after the join");
    let map = &s.pools["p"].map;
    let moved: Vec<u32> = (0..32).filter(|pg| map.targets(*pg) == [2]).collect();
    assert!(!moved.is_empty(), "the newcomer takes some PGs");
    for &pg in &moved {
        assert_eq!(map.pgs[pg as usize], vec![2, 1], "PG {pg}");
        assert_eq!(s.volumes["v"].acting(pg, &map.pgs[pg as usize]), vec![1]);
    }
    let mut s = attached(s);
    let epoch = s.pools["p"].map.epoch;
    for &pg in &moved {
        let restore = CommandV1::RestoreReplicaV2 {
            volume: "v".into(),
            pg,
            node: 2,
            attach_epoch: 1,
        };
        s.apply(&restore.into()).expect("restore");
        assert_eq!(
            s.pools["p"].map.pgs[pg as usize],
            vec![2],
            "PG {pg} settled"
        );
        check_state(&s, "after a restore");
    }
    assert_eq!(s.pools["p"].map.epoch, epoch + moved.len() as u64);

    let mut s = cluster(1, 1);
    s.apply(&CommandV1::DeleteVolume { name: "v".into() }.into())
        .expect("delete");
    s.apply(&node(2, 2).into()).expect("join");
    assert!(s.pools["p"].map.pgs.iter().any(|r| r == &[2]));
    assert!(s.pools["p"].map.leaving.is_empty());
}

/// A drained node keeps serving every PG it held until its successor is current, then holds
/// none.
#[test]
fn a_drained_node_leaves_each_pg_once_its_successor_is_current() {
    let mut s = attached(cluster(4, 3));
    let holds = |s: &ClusterState, n: u64| {
        s.pools["p"]
            .map
            .pgs
            .iter()
            .filter(|r| r.contains(&n))
            .count()
    };
    let held = holds(&s, 1);
    assert!(held > 0);
    s.apply(
        &CommandV1::SetDraining {
            node: 1,
            draining: true,
        }
        .into(),
    )
    .expect("drain");
    check_state(&s, "after the drain started");
    assert_eq!(
        holds(&s, 1),
        held,
        "a draining node keeps its PGs while they move"
    );
    let map = s.pools["p"].map.clone();
    for pg in 0..32u32 {
        assert!(
            !map.targets(pg).contains(&1),
            "PG {pg} still targets the drained node"
        );
        if map.pgs[pg as usize].contains(&1) {
            let acting = s.volumes["v"].acting(pg, &map.pgs[pg as usize]);
            assert!(
                acting.contains(&1),
                "PG {pg}: the drained node serves until replaced"
            );
            assert_eq!(acting.len(), 3, "PG {pg}: no copy lost meanwhile");
        }
    }
    let stale: Vec<(u32, u64)> = s.volumes["v"]
        .stale
        .iter()
        .flat_map(|(pg, nodes)| nodes.iter().map(move |n| (*pg, *n)))
        .collect();
    for (pg, node) in stale {
        let restore = CommandV1::RestoreReplicaV2 {
            volume: "v".into(),
            pg,
            node,
            attach_epoch: 1,
        };
        s.apply(&restore.into()).expect("restore");
        check_state(&s, "after a restore");
    }
    assert_eq!(holds(&s, 1), 0, "drained");
    assert!(s.pools["p"].map.leaving.is_empty());
}
