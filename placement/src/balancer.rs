//! The balancer: moves single replicas from over-full to under-full disks, by writing
//! overrides, until every disk is within ±1 PG (or ±1%) of its weighted target or the round's
//! budget is spent. Straw2-style selection alone leaves Poisson noise (a disk with a target of
//! 26 replicas commonly holds 18 or 36); the balancer removes it with few moves.
//!
//! Rules are never broken: a move is only planned if the PG's resulting replica set uses
//! eligible disks in distinct failure domains (`overrides::remap_is_safe`), and moves are
//! greedy, each one bringing a disk that is out of tolerance closer to its target without
//! pushing the other disk out of tolerance.

use std::collections::BTreeSet;

use crate::error::PlacementError;
use crate::map::ClusterMap;
use crate::overrides::{Overrides, remap_is_safe};
use crate::pgmap::PgMap;
use crate::pool::Pool;
use crate::stats::{deviation_allowed, targets};

/// Partner disks tried for one out-of-tolerance disk before it is given up for this round.
pub const PARTNERS_TRIED_MAX: usize = 256;
/// Fixed-point scale of deviations used to order disks.
const DEVIATION_SCALE: f64 = 4096.0;

/// One planned replica move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Move {
    pub pg: u32,
    pub from: u32,
    pub to: u32,
}

/// The result of one balancer round.
#[derive(Clone, Debug)]
pub struct BalancePlan {
    /// The pool's overrides after the round (the old ones plus the new moves).
    pub overrides: Overrides,
    /// Moves in the order planned; never more than the budget.
    pub moves: Vec<Move>,
    /// The PG map after the moves; equal to recomputing with `overrides`.
    pub pgmap: PgMap,
    /// Disks still out of tolerance (budget spent or no rule-safe move left).
    pub unbalanced_disks: usize,
}

/// Plans at most `moves_max` replica moves for `pool`, starting from `current`, which must be
/// the pool's PG map on `map` with `overrides` applied.
pub fn balance(
    map: &ClusterMap,
    pool: &Pool,
    current: &PgMap,
    overrides: &Overrides,
    moves_max: usize,
) -> Result<BalancePlan, PlacementError> {
    let stale = || PlacementError::StalePgMap {
        pool: current.pool(),
        pgmap_epoch: current.epoch(),
        map_epoch: map.epoch(),
    };
    if current.epoch() != map.epoch() || current.pool() != pool.id() || pool.epoch() != map.epoch()
    {
        return Err(stale());
    }
    let mut state = State::new(map, pool, current).ok_or_else(stale)?;
    let mut overrides = overrides.clone();
    let mut moves = Vec::new();
    let mut given_up = vec![false; map.disk_count()];

    while moves.len() < moves_max {
        let Some((disk, over)) = state.worst(&given_up) else {
            break;
        };
        let found = if over {
            state.find_receiver(disk)
        } else {
            state.find_donor(disk)
        };
        let Some((pg, from, to)) = found else {
            given_up[disk as usize] = true;
            continue;
        };
        state.apply(pg, from, to);
        let (from_id, to_id) = (map.disk(from).id, map.disk(to).id);
        overrides.redirect(pg, from_id, to_id);
        moves.push(Move {
            pg,
            from: from_id,
            to: to_id,
        });
    }

    let unbalanced_disks = state.unbalanced();
    let slots = state.slots;
    let disks = slots.iter().map(|&s| map.disk(s).id).collect();
    let pgmap = PgMap::from_parts(pool.id(), map.epoch(), pool.replicas(), disks);
    Ok(BalancePlan {
        overrides,
        moves,
        pgmap,
        unbalanced_disks,
    })
}

/// Replica counts and PG lists per disk, kept in step with every planned move.
struct State<'a> {
    pool: &'a Pool,
    replicas: usize,
    /// Flat replica slots, `replicas` per PG.
    slots: Vec<u32>,
    counts: Vec<i64>,
    targets: Vec<f64>,
    pgs_on: Vec<Vec<u32>>,
    /// Eligible disks ordered by relative deviation from target (most under-full first).
    order: BTreeSet<(i64, u32)>,
}

impl<'a> State<'a> {
    fn new(map: &ClusterMap, pool: &'a Pool, current: &PgMap) -> Option<State<'a>> {
        let replicas = pool.replicas();
        let disks = map.disk_count();
        let mut slots = Vec::with_capacity(current.pg_count() as usize * replicas);
        let mut counts = vec![0i64; disks];
        let mut pgs_on: Vec<Vec<u32>> = vec![Vec::new(); disks];
        for (pg, ids) in current.iter() {
            for &id in ids {
                let slot = map.slot_of(id)?;
                slots.push(slot);
                counts[slot as usize] += 1;
                pgs_on[slot as usize].push(pg);
            }
        }
        let total = counts.iter().sum::<i64>() as u64;
        let targets = targets(map, pool, total);
        let mut state = State {
            pool,
            replicas,
            slots,
            counts,
            targets,
            pgs_on,
            order: BTreeSet::new(),
        };
        for slot in 0..disks as u32 {
            if pool.is_eligible(slot) {
                state.order.insert(state.key(slot));
            }
        }
        Some(state)
    }

    fn deviation(&self, slot: u32) -> f64 {
        self.counts[slot as usize] as f64 - self.targets[slot as usize]
    }

    /// Orders disks by deviation in units of their own tolerance.
    fn key(&self, slot: u32) -> (i64, u32) {
        (
            (self.deviation(slot) / self.allowed(slot) * DEVIATION_SCALE).round() as i64,
            slot,
        )
    }

    fn allowed(&self, slot: u32) -> f64 {
        deviation_allowed(self.targets[slot as usize])
    }

    /// The disk furthest beyond tolerance (and whether it is over-full), skipping given-up ones.
    fn worst(&self, given_up: &[bool]) -> Option<(u32, bool)> {
        // Keys are rounded, so scan past ties at the tolerance boundary instead of trusting
        // the first key alone.
        let boundary = DEVIATION_SCALE as i64 - 1;
        let candidates = |keys: &mut dyn Iterator<Item = &(i64, u32)>, over: bool| {
            keys.take_while(|&&(key, _)| {
                if over {
                    key >= boundary
                } else {
                    key <= -boundary
                }
            })
            .map(|&(_, s)| s)
            .filter(|&s| !given_up[s as usize])
            .find(|&s| {
                if over {
                    self.deviation(s) > self.allowed(s)
                } else {
                    -self.deviation(s) > self.allowed(s)
                }
            })
        };
        let over = candidates(&mut self.order.iter().rev(), true);
        let under = candidates(&mut self.order.iter(), false);
        let beyond = |slot: u32| self.deviation(slot).abs() - self.allowed(slot);
        match (over, under) {
            (Some(o), Some(u)) => Some(if beyond(o) >= beyond(u) {
                (o, true)
            } else {
                (u, false)
            }),
            (Some(o), None) => Some((o, true)),
            (None, Some(u)) => Some((u, false)),
            (None, None) => None,
        }
    }

    /// A PG on over-full `from` and the most under-full disk that may take its replica.
    fn find_receiver(&self, from: u32) -> Option<(u32, u32, u32)> {
        for &(_, to) in self.order.iter().take(PARTNERS_TRIED_MAX) {
            if to == from || self.deviation(to) + 1.0 > self.allowed(to) {
                continue;
            }
            if let Some(pg) = self.movable_pg(from, to) {
                return Some((pg, from, to));
            }
        }
        None
    }

    /// The most over-full disk that can hand one of its PGs to under-full `to`.
    fn find_donor(&self, to: u32) -> Option<(u32, u32, u32)> {
        for &(_, from) in self.order.iter().rev().take(PARTNERS_TRIED_MAX) {
            if from == to || self.deviation(from) - 1.0 < -self.allowed(from) {
                continue;
            }
            if let Some(pg) = self.movable_pg(from, to) {
                return Some((pg, from, to));
            }
        }
        None
    }

    /// A PG with a replica on `from` whose replica set stays rule-safe with `to` instead.
    fn movable_pg(&self, from: u32, to: u32) -> Option<u32> {
        self.pgs_on[from as usize].iter().copied().find(|&pg| {
            let set = self.pg_slots(pg);
            let at = set
                .iter()
                .position(|&s| s == from)
                .expect("pgs_on is in step with slots");
            remap_is_safe(self.pool, set, at, to)
        })
    }

    fn pg_slots(&self, pg: u32) -> &[u32] {
        &self.slots[pg as usize * self.replicas..(pg as usize + 1) * self.replicas]
    }

    fn apply(&mut self, pg: u32, from: u32, to: u32) {
        let base = pg as usize * self.replicas;
        let at = self
            .pg_slots(pg)
            .iter()
            .position(|&s| s == from)
            .expect("move source holds the PG");
        assert!(
            remap_is_safe(self.pool, self.pg_slots(pg), at, to),
            "balancer planned an unsafe move"
        );
        self.slots[base + at] = to;

        for (slot, delta) in [(from, -1i64), (to, 1)] {
            let removed = self.order.remove(&self.key(slot));
            debug_assert!(removed);
            self.counts[slot as usize] += delta;
            self.order.insert(self.key(slot));
        }
        let list = &mut self.pgs_on[from as usize];
        let i = list
            .iter()
            .position(|&p| p == pg)
            .expect("pgs_on is in step with slots");
        list.swap_remove(i);
        self.pgs_on[to as usize].push(pg);
    }

    fn unbalanced(&self) -> usize {
        self.order
            .iter()
            .filter(|&&(_, s)| self.deviation(s).abs() > self.allowed(s))
            .count()
    }
}
