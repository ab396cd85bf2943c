//! The balancer as operators drive it: `plan` shows what `placement::balance` would move in a
//! pool (PGs, bytes, replicas per node before and after, rule checks) within a budget of moves
//! and bytes, and the `Rebalance` command carries such a plan into the replicated state as
//! overrides. Moves then go through the same handover as any remap: each moved replica stays
//! in its PG until its successor is current, rebuilt at the rebuild's throttled rate.
//!
//! Bytes are provisioned bytes: the part of every volume of the pool whose extents hash to the
//! PG. For thin volumes that is an upper bound of what a move copies.

use std::collections::BTreeMap;

use volume::wire::VolumeId;

use super::command::{Applied, CommandError, Outcome};
use super::model::{DiskMove, NodeId, Pool, Volume};
use super::state::ClusterState;

/// Most moves one plan (and one `Rebalance` command) may carry.
pub const BALANCE_MOVES_MAX: usize = 4096;
/// Volumes with more extents than this count as spread evenly over the PGs when bytes per PG
/// are estimated, rather than hashing every extent.
const EXTENTS_HASHED_MAX: u64 = 1 << 20;

/// How much one plan may move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub moves_max: usize,
    pub bytes_max: u64,
}

/// One replica the plan moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannedMove {
    pub pg: u32,
    pub from_node: NodeId,
    pub to_node: NodeId,
    pub from_disk: u32,
    pub to_disk: u32,
    /// Provisioned bytes of the PG: what the move copies at most.
    pub bytes: u64,
}

/// Replicas and provisioned bytes a node holds in the pool, before and after the plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeLoad {
    pub node: NodeId,
    pub replicas_before: u64,
    pub replicas_after: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// What the balancer would do to a pool.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub pool: String,
    /// The pool's map epoch the plan was made at; applying it later is refused.
    pub pool_epoch: u64,
    /// Moves within the budget, in the order planned.
    pub moves: Vec<PlannedMove>,
    /// Moves the balancer wanted within the move budget, before the byte budget cut them.
    pub moves_wanted: usize,
    pub nodes: Vec<NodeLoad>,
    /// Disks outside their tolerance before and after the plan.
    pub unbalanced_disks_before: usize,
    pub unbalanced_disks_after: usize,
    /// Rule violations (shared failure domains, ineligible disks) after the plan: always 0
    /// for a plan the balancer made, checked independently of it.
    pub violations_after: u64,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.moves.iter().map(|m| m.bytes).sum()
    }

    pub fn disk_moves(&self) -> Vec<DiskMove> {
        self.moves
            .iter()
            .map(|m| DiskMove {
                pg: m.pg,
                from_disk: m.from_disk,
                to_disk: m.to_disk,
            })
            .collect()
    }
}

/// Provisioned bytes of every PG of `pool`.
fn pg_bytes(pool: &Pool, volumes: &[&Volume]) -> Vec<u64> {
    let pg_count = pool.spec.pg_count as usize;
    let mut bytes = vec![0u64; pg_count];
    for v in volumes {
        let (size, extent) = (v.spec.size_bytes, v.spec.extent_size_bytes);
        let extents = size.div_ceil(extent);
        if extents > EXTENTS_HASHED_MAX {
            for b in &mut bytes {
                *b += size / pg_count as u64;
            }
            continue;
        }
        for e in 0..extents {
            let len = extent.min(size - e * extent);
            bytes[volume::client::pg_of(VolumeId(v.id), e, pg_count)] += len;
        }
    }
    bytes
}

/// The overrides of `pool`, kept only if they were written for it.
fn overrides_of(pool: &Pool) -> placement::Overrides {
    match pool.overrides.pool == pool.id {
        true => pool.overrides.clone(),
        false => placement::Overrides::new(pool.id),
    }
}

/// Plans the balancer's moves for pool `name` within `budget`. Refused while the pool still
/// hands PGs over (balance once the last moves are done) or its map is not placement's.
pub fn plan(state: &ClusterState, name: &str, budget: Budget) -> Result<Plan, CommandError> {
    let pool = state
        .pools
        .get(name)
        .ok_or_else(|| CommandError::NotFound(format!("pool {name}")))?;
    if !pool.map.leaving.is_empty() {
        return Err(CommandError::FailedPrecondition(format!(
            "pool {name} is still moving {} PGs; balance once they are done",
            pool.map.leaving.len()
        )));
    }
    let spec = &pool.spec;
    let topology = &state.topology;
    let (map, placed) = topology.placement_pool(pool.id, name, &spec.rule, spec.pg_count)?;
    let overrides = overrides_of(pool);
    let current = placement::PgMap::compute(&map, &placed, Some(&overrides))
        .map_err(|e| CommandError::FailedPrecondition(e.to_string()))?;
    if topology.named(&current).disks != pool.map.disks {
        return Err(CommandError::FailedPrecondition(format!(
            "pool {name}: its map is not what placement computes now (its rule could not be \
             met by the last topology change); nothing to balance until it can"
        )));
    }
    let moves_max = budget.moves_max.min(BALANCE_MOVES_MAX);
    let planned = placement::balance(&map, &placed, &current, &overrides, moves_max)
        .map_err(|e| CommandError::FailedPrecondition(e.to_string()))?;
    let bytes = pg_bytes(pool, &state.volumes_of(name));
    let owner = |disk: u32| topology.disk_owner[&disk];

    let mut moves = Vec::new();
    let mut spent = 0u64;
    for m in &planned.moves {
        let b = bytes[m.pg as usize];
        if spent + b > budget.bytes_max {
            // Later moves were planned on top of this one: stop rather than skip.
            break;
        }
        spent += b;
        moves.push(PlannedMove {
            pg: m.pg,
            from_node: owner(m.from),
            to_node: owner(m.to),
            from_disk: m.from,
            to_disk: m.to,
            bytes: b,
        });
    }

    let mut after: Vec<Vec<u32>> = pool.map.disks.clone();
    for m in &moves {
        let list = &mut after[m.pg as usize];
        let i = list
            .iter()
            .position(|d| *d == m.from_disk)
            .expect("the balancer moves a replica the PG has");
        list[i] = m.to_disk;
    }
    let after_map = placement::PgMap::from_parts(
        pool.id,
        map.epoch(),
        placed.replicas(),
        after.iter().flatten().copied().collect(),
    );
    let mut loads: BTreeMap<NodeId, NodeLoad> = BTreeMap::new();
    let mut count = |disk: u32, after: bool, pg_bytes: u64| {
        let node = owner(disk);
        let l = loads.entry(node).or_insert(NodeLoad {
            node,
            ..NodeLoad::default()
        });
        let (replicas, bytes) = match after {
            false => (&mut l.replicas_before, &mut l.bytes_before),
            true => (&mut l.replicas_after, &mut l.bytes_after),
        };
        *replicas += 1;
        *bytes += pg_bytes;
    };
    for (pg, (was, will)) in pool.map.disks.iter().zip(&after).enumerate() {
        was.iter().for_each(|d| count(*d, false, bytes[pg]));
        will.iter().for_each(|d| count(*d, true, bytes[pg]));
    }
    Ok(Plan {
        pool: name.to_owned(),
        pool_epoch: pool.map.epoch,
        moves_wanted: planned.moves.len(),
        moves,
        nodes: loads.into_values().collect(),
        unbalanced_disks_before: placement::Balance::of(&map, &placed, &current).unbalanced_disks,
        unbalanced_disks_after: placement::Balance::of(&map, &placed, &after_map).unbalanced_disks,
        violations_after: placement::Violations::of(&map, &placed, &after_map).total(),
    })
}

impl ClusterState {
    /// Applies a plan's `moves` to pool `name` as overrides, if the pool is still at map epoch
    /// `pool_epoch` and every move keeps the pool's rule; the moved PGs are then handed over.
    pub(super) fn rebalance(&mut self, name: &str, pool_epoch: u64, moves: &[DiskMove]) -> Outcome {
        let pool = self
            .pools
            .get(name)
            .ok_or_else(|| CommandError::NotFound(format!("pool {name}")))?;
        if pool.map.epoch != pool_epoch {
            return Err(CommandError::FailedPrecondition(format!(
                "pool {name} is at map epoch {}, the plan was made at {pool_epoch}: plan again",
                pool.map.epoch
            )));
        }
        if moves.len() > BALANCE_MOVES_MAX {
            return Err(CommandError::InvalidArgument(format!(
                "{} moves; at most {BALANCE_MOVES_MAX} at once",
                moves.len()
            )));
        }
        if !pool.map.leaving.is_empty() {
            return Err(CommandError::FailedPrecondition(format!(
                "pool {name} is still moving {} PGs",
                pool.map.leaving.len()
            )));
        }
        let spec = &pool.spec;
        let mut overrides = overrides_of(pool);
        let now = self
            .topology
            .pg_map(pool.id, name, &spec.rule, spec.pg_count, &overrides)?;
        let mut expected = now.disks;
        for m in moves {
            let list = expected.get_mut(m.pg as usize).ok_or_else(|| {
                CommandError::InvalidArgument(format!("pool {name} has no PG {}", m.pg))
            })?;
            if m.from_disk == m.to_disk || list.contains(&m.to_disk) {
                return Err(CommandError::InvalidArgument(format!(
                    "PG {} already has a replica on disk {}",
                    m.pg, m.to_disk
                )));
            }
            let i = list.iter().position(|d| *d == m.from_disk).ok_or_else(|| {
                CommandError::FailedPrecondition(format!(
                    "PG {} of pool {name} has no replica on disk {}",
                    m.pg, m.from_disk
                ))
            })?;
            list[i] = m.to_disk;
            overrides.redirect(m.pg, m.from_disk, m.to_disk);
        }
        let next = self
            .topology
            .pg_map(pool.id, name, &spec.rule, spec.pg_count, &overrides)?;
        if next.disks != expected {
            return Err(CommandError::FailedPrecondition(format!(
                "the moves would break the rule of pool {name} (a shared failure domain or a \
                 disk the pool may not use)"
            )));
        }
        let old = std::mem::replace(
            &mut self
                .pools
                .get_mut(name)
                .expect("pool looked up above")
                .overrides,
            overrides,
        );
        match self.pool_maps(&self.topology) {
            Ok(maps) => self.remap_pools(maps),
            Err(e) => {
                self.pools
                    .get_mut(name)
                    .expect("pool looked up above")
                    .overrides = old;
                return Err(e);
            }
        }
        Ok(Applied::Pool(self.pools[name].clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::command::{Command, CommandV1};
    use crate::meta::model::{DiskInfo, Location, NodeRegistration, PoolSpec, Rule, VolumeSpec};

    /// Seven nodes of unequal disks, in six racks (node 7 shares rack 1); pool `p` of 3
    /// replicas over 64 PGs holding a 256 MiB volume.
    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        let mut apply = |c: CommandV1| s.apply(&Command::V1(c)).expect("set up");
        for id in 1..=7u64 {
            apply(CommandV1::RegisterNode(NodeRegistration {
                id,
                rpc_addr: String::new(),
                data_addr: format!("127.0.0.1:{}", 9000 + id),
                location: Location {
                    levels: vec![("rack".into(), format!("r{}", if id == 7 { 1 } else { id }))],
                },
                disks: vec![DiskInfo {
                    name: "d0".into(),
                    capacity_bytes: (1 + id % 2) << 40,
                }],
            }));
        }
        apply(CommandV1::CreatePool(PoolSpec {
            name: "p".into(),
            rule: Rule {
                replicas: 3,
                min_replicas: 2,
                failure_domain: "rack".into(),
                tag_filter: vec![],
            },
            pg_count: 64,
        }));
        apply(CommandV1::CreateVolume(VolumeSpec {
            name: "v".into(),
            pool: "p".into(),
            size_bytes: 256 << 20,
            extent_size_bytes: 4 << 20,
            request_id: String::new(),
        }));
        s
    }

    const UNLIMITED: Budget = Budget {
        moves_max: BALANCE_MOVES_MAX,
        bytes_max: u64::MAX,
    };

    #[test]
    fn a_plan_keeps_to_its_budget_and_counts_every_byte() {
        let s = cluster();
        let full = plan(&s, "p", UNLIMITED).expect("plan");
        assert!(full.moves.len() >= 4, "{full:?}");
        assert_eq!(full.violations_after, 0);
        assert!(full.unbalanced_disks_after < full.unbalanced_disks_before);
        // Every provisioned byte is in some PG, three times over.
        let held: u64 = full.nodes.iter().map(|n| n.bytes_before).sum();
        assert_eq!(held, 3 * (256 << 20));
        let after: u64 = full.nodes.iter().map(|n| n.bytes_after).sum();
        assert_eq!(after, held);

        let two = plan(
            &s,
            "p",
            Budget {
                moves_max: 2,
                ..UNLIMITED
            },
        )
        .expect("plan");
        assert_eq!(two.moves, full.moves[..2]);
        let cap = full.moves[0].bytes + full.moves[1].bytes;
        let cut = plan(
            &s,
            "p",
            Budget {
                bytes_max: cap,
                ..UNLIMITED
            },
        )
        .expect("plan");
        assert!(cut.bytes() <= cap && cut.moves.len() >= 2, "{cut:?}");
        assert_eq!(cut.moves, full.moves[..cut.moves.len()]);
        assert_eq!(cut.moves_wanted, full.moves.len());
    }

    #[test]
    fn an_applied_plan_moves_exactly_its_pgs_and_hands_them_over() {
        let mut s = cluster();
        let before = s.pools["p"].map.clone();
        let p = plan(
            &s,
            "p",
            Budget {
                moves_max: 3,
                ..UNLIMITED
            },
        )
        .expect("plan");
        let rebalance = CommandV1::Rebalance {
            pool: "p".into(),
            pool_epoch: p.pool_epoch,
            moves: p.disk_moves(),
        };
        s.apply(&Command::V1(rebalance.clone())).expect("apply");
        let after = &s.pools["p"].map;
        assert_eq!(after.epoch, before.epoch + 1);
        for pg in 0..64u32 {
            let moved: Vec<&PlannedMove> = p.moves.iter().filter(|m| m.pg == pg).collect();
            if moved.is_empty() {
                assert_eq!(after.pgs[pg as usize], before.pgs[pg as usize], "PG {pg}");
                continue;
            }
            for m in moved {
                assert!(after.targets(pg).contains(&m.to_node), "PG {pg}");
                assert!(!after.targets(pg).contains(&m.from_node), "PG {pg}");
                // The volume's data is in the PG: the old replica stays until the new is current.
                assert!(after.leaving[&pg].contains(&m.from_node), "PG {pg}");
                assert!(s.volumes["v"].stale[&pg].contains(&m.to_node), "PG {pg}");
            }
        }
        // Planning again while PGs are handed over is refused, and so is the old plan.
        assert!(matches!(
            plan(&s, "p", UNLIMITED),
            Err(CommandError::FailedPrecondition(_))
        ));
        let before = s.clone();
        assert!(matches!(
            s.apply(&Command::V1(rebalance)),
            Err(CommandError::FailedPrecondition(_))
        ));
        assert_eq!(s, before);
    }

    #[test]
    fn a_move_that_breaks_the_rule_is_refused_and_changes_nothing() {
        let mut s = cluster();
        let map = s.pools["p"].map.clone();
        let owners = s.topology.disk_owner.clone();
        let disk_of = |node: NodeId| *owners.iter().find(|(_, n)| **n == node).expect("a disk").0;
        let rebalance = |pg: u32, from_disk: u32, to_disk: u32| {
            Command::V1(CommandV1::Rebalance {
                pool: "p".into(),
                pool_epoch: map.epoch,
                moves: vec![DiskMove {
                    pg,
                    from_disk,
                    to_disk,
                }],
            })
        };
        let before = s.clone();
        // Onto a disk the PG already uses.
        let refused = s.apply(&rebalance(0, map.disks[0][0], map.disks[0][1]));
        assert!(
            matches!(refused, Err(CommandError::InvalidArgument(_))),
            "{refused:?}"
        );
        // Onto node 7, in the rack of node 1, for a PG that node 1 already serves.
        let pg = (0..64)
            .find(|&pg| map.pgs[pg].contains(&1) && !map.pgs[pg].contains(&7))
            .expect("a PG on node 1");
        let i = map.pgs[pg].iter().position(|n| *n != 1).unwrap();
        let refused = s.apply(&rebalance(pg as u32, map.disks[pg][i], disk_of(7)));
        match refused {
            Err(CommandError::FailedPrecondition(m)) => assert!(m.contains("rule"), "{m}"),
            other => panic!("{other:?}"),
        }
        // From a disk the PG does not use.
        let refused = s.apply(&rebalance(pg as u32, 9999, disk_of(7)));
        assert!(
            matches!(refused, Err(CommandError::FailedPrecondition(_))),
            "{refused:?}"
        );
        assert_eq!(s, before);
    }
}
