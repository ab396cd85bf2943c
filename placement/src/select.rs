//! Straw2-style selection: which ordered list of disks holds one PG.
//!
//! Every PG sees its own endless, deterministic stream of points on the capacity line. The line
//! is cut into equal blocks; each block emits points as a Poisson process whose waiting times
//! are exponential draws from the pinned hash (`hash::neg_ln_ticks`), and the stream is all
//! blocks' points in time order: the straw2 race, run between equally weighted blocks, again and
//! again. A point lands on the disk owning that position. The replicas are the first points, in
//! stream order, that land on a disk the pool may use and in a failure domain not used yet.
//!
//! Why this shape: a disk's chance to win a point is its share of the line, so distribution
//! follows weight; a point only changes owner when its own range of the line changed, so only
//! replicas on capacity that was added, removed or reweighted move; and growing the line adds
//! blocks, which only inserts new points into each stream and never moves old ones. Cost per PG
//! is one draw per block to start the race plus a short scan per point.

use crate::error::PlacementError;
use crate::hash::{self, DRAW_POSITION, DRAW_TIME};
use crate::line::HOLE;
use crate::map::ClusterMap;
use crate::pool::{NOT_ELIGIBLE, Pool, REPLICAS_MAX};

/// Most points one PG may draw before its rule is declared too selective. A rule passing
/// `Pool::compile` needs this many only if nearly all of the line is filtered out or missing.
pub const DRAWS_PER_PG_MAX: u32 = 1 << 16;

/// Maps PGs of one pool on one map. Holds scratch space, so keep one per thread and reuse it.
pub struct Placer<'a> {
    map: &'a ClusterMap,
    pool: &'a Pool,
    next_time: Vec<u64>,
    arrivals: Vec<u32>,
}

impl<'a> Placer<'a> {
    /// Fails if `pool` was compiled for another epoch of the map.
    pub fn new(map: &'a ClusterMap, pool: &'a Pool) -> Result<Placer<'a>, PlacementError> {
        if pool.epoch() != map.epoch() {
            return Err(PlacementError::StaleRule {
                pool: pool.name().to_string(),
                pool_epoch: pool.epoch(),
                map_epoch: map.epoch(),
            });
        }
        let blocks = map.line().blocks() as usize;
        Ok(Placer {
            map,
            pool,
            next_time: vec![0; blocks],
            arrivals: vec![0; blocks],
        })
    }

    pub fn map(&self) -> &'a ClusterMap {
        self.map
    }

    pub fn pool(&self) -> &'a Pool {
        self.pool
    }

    /// Writes the ordered replicas of `pg`, as disk ids, into `out[..pool.replicas()]`.
    pub fn place(&mut self, pg: u32, out: &mut [u32]) -> Result<(), PlacementError> {
        self.place_slots(pg, out)?;
        for r in out[..self.pool.replicas()].iter_mut() {
            *r = self.map.disk(*r).id;
        }
        Ok(())
    }

    /// Like `place`, but writes disk slots (dense indices) instead of ids.
    pub fn place_slots(&mut self, pg: u32, out: &mut [u32]) -> Result<(), PlacementError> {
        let pool = self.pool;
        if pg >= pool.pg_count() {
            return Err(PlacementError::PgOutOfRange {
                pool: pool.name().to_string(),
                pg,
                pg_count: pool.pg_count(),
            });
        }
        let replicas = pool.replicas();
        assert!(
            out.len() >= replicas,
            "output has room for {} of {replicas} replicas",
            out.len()
        );

        let line = self.map.line();
        let block_units = line.block_units();
        let key = hash::pg_key(pool.id(), pg);
        for (block, (time, arrivals)) in self
            .next_time
            .iter_mut()
            .zip(self.arrivals.iter_mut())
            .enumerate()
        {
            *time = hash::neg_ln_ticks(hash::draw(key, block as u32, 0, DRAW_TIME));
            *arrivals = 0;
        }

        let mut domains = [u32::MAX; REPLICAS_MAX as usize];
        let mut chosen = 0usize;
        for _ in 0..DRAWS_PER_PG_MAX {
            let (block, time) = earliest(&self.next_time);
            let arrival = self.arrivals[block];
            let offset = hash::scale(
                hash::draw(key, block as u32, arrival, DRAW_POSITION),
                block_units,
            );
            self.arrivals[block] = arrival + 1;
            self.next_time[block] =
                time + hash::neg_ln_ticks(hash::draw(key, block as u32, arrival + 1, DRAW_TIME));

            let slot = line.owner_at(block as u64 * block_units + offset);
            if slot == HOLE {
                continue;
            }
            let domain = pool.placement_domain(slot);
            if domain == NOT_ELIGIBLE || domains[..chosen].contains(&domain) {
                continue;
            }
            out[chosen] = slot;
            domains[chosen] = domain;
            chosen += 1;
            if chosen == replicas {
                return Ok(());
            }
        }
        Err(PlacementError::DrawsExhausted {
            pool: pool.name().to_string(),
            pg,
            attempts: DRAWS_PER_PG_MAX,
        })
    }
}

/// The block whose next point comes first; ties go to the lower block.
#[inline]
fn earliest(next_time: &[u64]) -> (usize, u64) {
    let mut best = 0;
    let mut best_time = next_time[0];
    for (block, &time) in next_time.iter().enumerate().skip(1) {
        if time < best_time {
            best = block;
            best_time = time;
        }
    }
    (best, best_time)
}
