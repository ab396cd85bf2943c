//! The PG map of one pool: for every PG, its ordered replica list (disk ids), computed from one
//! map epoch plus the pool's overrides. Stored flat (`replicas` ids per PG), so a
//! 1,048,576-PG, 3-replica pool takes 12 MiB.

use crate::error::PlacementError;
use crate::map::ClusterMap;
use crate::overrides::Overrides;
use crate::pool::{Pool, REPLICAS_MAX};
use crate::select::Placer;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgMap {
    pool: u32,
    epoch: u64,
    replicas: usize,
    disks: Vec<u32>,
}

impl PgMap {
    /// Maps every PG of `pool` on `map`, then applies `overrides`. Single-threaded; callers
    /// that want parallelism split the PG range over `compute_chunk`.
    pub fn compute(
        map: &ClusterMap,
        pool: &Pool,
        overrides: Option<&Overrides>,
    ) -> Result<PgMap, PlacementError> {
        let mut disks = vec![0u32; pool.pg_count() as usize * pool.replicas()];
        PgMap::compute_chunk(map, pool, overrides, 0, &mut disks)?;
        Ok(PgMap::from_parts(
            pool.id(),
            map.epoch(),
            pool.replicas(),
            disks,
        ))
    }

    /// Maps PGs `first_pg..` into `out`, `pool.replicas()` disk ids per PG.
    pub fn compute_chunk(
        map: &ClusterMap,
        pool: &Pool,
        overrides: Option<&Overrides>,
        first_pg: u32,
        out: &mut [u32],
    ) -> Result<(), PlacementError> {
        let replicas = pool.replicas();
        assert!(
            out.len().is_multiple_of(replicas),
            "chunk must hold whole PGs"
        );
        if let Some(o) = overrides {
            assert_eq!(
                o.pool,
                pool.id(),
                "overrides of pool {} used for pool {}",
                o.pool,
                pool.id()
            );
        }
        let mut placer = Placer::new(map, pool)?;
        let mut slots = [0u32; REPLICAS_MAX as usize];
        for (i, pg_out) in out.chunks_exact_mut(replicas).enumerate() {
            let pg = first_pg + i as u32;
            placer.place_slots(pg, &mut slots)?;
            if let Some(o) = overrides {
                o.apply(map, pool, pg, &mut slots[..replicas]);
            }
            for (id, &slot) in pg_out.iter_mut().zip(&slots[..replicas]) {
                *id = map.disk(slot).id;
            }
        }
        Ok(())
    }

    /// Wraps an already computed flat replica list.
    pub fn from_parts(pool: u32, epoch: u64, replicas: usize, disks: Vec<u32>) -> PgMap {
        assert!(replicas > 0 && disks.len().is_multiple_of(replicas));
        PgMap {
            pool,
            epoch,
            replicas,
            disks,
        }
    }

    pub fn pool(&self) -> u32 {
        self.pool
    }

    /// The map epoch this PG map was computed from.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    pub fn pg_count(&self) -> u32 {
        (self.disks.len() / self.replicas) as u32
    }

    /// Ordered replica list (disk ids) of `pg`; the first is the primary.
    pub fn pg(&self, pg: u32) -> &[u32] {
        let at = pg as usize * self.replicas;
        &self.disks[at..at + self.replicas]
    }

    /// `(pg, replicas)` for every PG in order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u32])> {
        self.disks
            .chunks_exact(self.replicas)
            .enumerate()
            .map(|(pg, r)| (pg as u32, r))
    }
}
