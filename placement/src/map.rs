//! The validated cluster map: a typed bucket hierarchy with weights, states, tags and the
//! capacity-line layout. `ClusterMap::new` is the only way to get one, and it either returns a
//! map that every other module may trust or a `MapError` naming the offending bucket.
//!
//! Invariants of a `ClusterMap`: ids and names are unique; there is exactly one root; every
//! other bucket's parent exists and sits exactly one level up (so there are no cycles and every
//! disk is inside a bucket of each level above it); every disk weighs at least one weight unit
//! and its layout covers exactly its weight; internal buckets weigh the sum of their disks.

use std::collections::{BTreeMap, HashMap};

use crate::error::MapError;
use crate::line::{self, Line};
use crate::spec::{
    BucketSpec, DISK_WEIGHT_MAX, LineRange, MapSpec, State, WEIGHT_UNITS_PER_WEIGHT,
};

/// Most levels a hierarchy may have.
pub const LEVELS_MAX: usize = 16;
/// Most buckets (disks included) one map may hold.
pub const BUCKETS_MAX: usize = 1 << 22;

/// One validated bucket. Indices (`parent`, `children`) point into `ClusterMap::bucket`.
#[derive(Clone, Debug)]
pub struct Bucket {
    pub id: u32,
    pub name: String,
    /// Index into `ClusterMap::levels`; 0 is the root level.
    pub level: u16,
    pub parent: Option<u32>,
    pub children: Vec<u32>,
    /// A disk's own weight, or the sum of the disks below, in weight units.
    pub weight_units: u64,
    /// Own state combined with every ancestor's.
    pub state: State,
    /// Own state as stored.
    pub own_state: State,
    /// Own tags as stored (not inherited).
    pub tags: BTreeMap<String, String>,
    /// Disks only: the disk's dense index (its "slot").
    pub disk_slot: Option<u32>,
    /// Disks only: the disk's ranges on the capacity line.
    pub ranges: Vec<LineRange>,
}

/// A validated cluster map; see the module docs for its invariants.
#[derive(Clone, Debug)]
pub struct ClusterMap {
    epoch: u64,
    levels: Vec<String>,
    buckets: Vec<Bucket>,
    by_id: HashMap<u32, u32>,
    root: u32,
    disks: Vec<u32>,
    line: Line,
}

impl ClusterMap {
    /// Validates `spec`, allocates capacity-line ranges for new or grown disks, and compiles.
    pub fn new(spec: MapSpec) -> Result<ClusterMap, MapError> {
        let MapSpec {
            epoch,
            levels,
            buckets: specs,
            block_units,
        } = spec;
        check_levels(&levels)?;
        if specs.len() > BUCKETS_MAX {
            return Err(MapError::TooManyBuckets {
                got: specs.len(),
                max: BUCKETS_MAX,
            });
        }
        let by_id = index_ids(&specs)?;
        let level_of = resolve_levels(&levels, &specs)?;
        let parent_of = resolve_parents(&specs, &by_id)?;
        check_no_cycles(&specs, &parent_of)?;
        let root = check_tree_shape(&levels, &specs, &level_of, &parent_of)?;

        let leaf_level = (levels.len() - 1) as u16;
        let mut disks = Vec::new();
        let mut disk_units = Vec::new();
        for (i, b) in specs.iter().enumerate() {
            if level_of[i] == leaf_level {
                disks.push(i as u32);
                disk_units.push(weight_units(b)?);
            } else if b.weight.is_some() || !b.ranges.is_empty() {
                return Err(MapError::WeightOnInternalBucket {
                    bucket: b.name.clone(),
                });
            }
        }

        let mut ranges: Vec<Vec<LineRange>> = Vec::with_capacity(disks.len());
        let mut buckets: Vec<Bucket> = Vec::with_capacity(specs.len());
        for (i, b) in specs.into_iter().enumerate() {
            let BucketSpec {
                id,
                name,
                level: _,
                parent: _,
                weight: _,
                state,
                tags,
                ranges: r,
            } = b;
            if level_of[i] == leaf_level {
                ranges.push(r);
            }
            buckets.push(Bucket {
                id,
                name,
                level: level_of[i],
                parent: parent_of[i],
                children: Vec::new(),
                weight_units: 0,
                state,
                own_state: state,
                tags,
                disk_slot: None,
                ranges: Vec::new(),
            });
        }
        let line = {
            let names: Vec<&str> = disks
                .iter()
                .map(|&d| buckets[d as usize].name.as_str())
                .collect();
            line::lay_out(&names, &disk_units, &mut ranges, block_units)?
        };
        for (slot, (&d, r)) in disks.iter().zip(ranges).enumerate() {
            let disk = &mut buckets[d as usize];
            disk.disk_slot = Some(slot as u32);
            disk.weight_units = disk_units[slot];
            disk.ranges = r;
        }
        finish_tree(&mut buckets);
        Ok(ClusterMap {
            epoch,
            levels,
            buckets,
            by_id,
            root,
            disks,
            line,
        })
    }

    /// The raw description of this map, complete with layout: `ClusterMap::new(map.to_spec())`
    /// reproduces the map exactly.
    pub fn to_spec(&self) -> MapSpec {
        let buckets = self
            .buckets
            .iter()
            .map(|b| BucketSpec {
                id: b.id,
                name: b.name.clone(),
                level: self.levels[b.level as usize].clone(),
                parent: b.parent.map(|p| self.buckets[p as usize].id),
                weight: b
                    .disk_slot
                    .map(|_| b.weight_units as f64 / WEIGHT_UNITS_PER_WEIGHT as f64),
                state: b.own_state,
                tags: b.tags.clone(),
                ranges: b.ranges.clone(),
            })
            .collect();
        MapSpec {
            epoch: self.epoch,
            levels: self.levels.clone(),
            buckets,
            block_units: Some(self.line.block_units()),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn levels(&self) -> &[String] {
        &self.levels
    }

    pub fn level_index(&self, name: &str) -> Option<u16> {
        self.levels.iter().position(|l| l == name).map(|i| i as u16)
    }

    pub fn leaf_level(&self) -> u16 {
        (self.levels.len() - 1) as u16
    }

    pub fn root(&self) -> u32 {
        self.root
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    pub fn bucket(&self, index: u32) -> &Bucket {
        &self.buckets[index as usize]
    }

    pub fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.buckets.iter()
    }

    pub fn index_of(&self, id: u32) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    pub fn bucket_by_id(&self, id: u32) -> Option<&Bucket> {
        self.index_of(id).map(|i| self.bucket(i))
    }

    pub fn disk_count(&self) -> usize {
        self.disks.len()
    }

    /// The disk in `slot` (a dense index `0..disk_count()`).
    pub fn disk(&self, slot: u32) -> &Bucket {
        &self.buckets[self.disks[slot as usize] as usize]
    }

    pub fn disk_index(&self, slot: u32) -> u32 {
        self.disks[slot as usize]
    }

    /// The slot of the disk with bucket id `id`, if it is a disk of this map.
    pub fn slot_of(&self, id: u32) -> Option<u32> {
        self.bucket_by_id(id).and_then(|b| b.disk_slot)
    }

    /// The ancestor of `bucket` (or `bucket` itself) at `level`, if `level` is at or above it.
    pub fn ancestor_at(&self, bucket: u32, level: u16) -> Option<u32> {
        let mut at = bucket;
        loop {
            let b = self.bucket(at);
            if b.level == level {
                return Some(at);
            }
            if b.level < level {
                return None;
            }
            at = b.parent?;
        }
    }

    /// Total weight of all disks, whatever their state, in weight units.
    pub fn total_weight_units(&self) -> u64 {
        self.bucket(self.root).weight_units
    }

    /// Units of the capacity line that belong to no disk (removed capacity not yet reused).
    pub fn hole_units(&self) -> u64 {
        self.line.hole_units()
    }

    /// Length of the capacity line, in weight units (disks plus holes).
    pub fn line_units(&self) -> u64 {
        self.line.len_units()
    }

    /// Blocks the capacity line is cut into; each costs one draw per PG.
    pub fn line_blocks(&self) -> u32 {
        self.line.blocks()
    }

    pub(crate) fn line(&self) -> &Line {
        &self.line
    }
}

fn check_levels(levels: &[String]) -> Result<(), MapError> {
    if levels.len() < 2 {
        return Err(MapError::TooFewLevels {
            got: levels.len(),
            min: 2,
        });
    }
    if levels.len() > LEVELS_MAX {
        return Err(MapError::TooManyLevels {
            got: levels.len(),
            max: LEVELS_MAX,
        });
    }
    for (i, level) in levels.iter().enumerate() {
        if level.is_empty() || levels[..i].contains(level) {
            return Err(MapError::BadLevelName {
                level: level.clone(),
            });
        }
    }
    Ok(())
}

fn index_ids(specs: &[BucketSpec]) -> Result<HashMap<u32, u32>, MapError> {
    let mut by_id: HashMap<u32, u32> = HashMap::with_capacity(specs.len());
    let mut by_name: HashMap<&str, u32> = HashMap::with_capacity(specs.len());
    for (i, b) in specs.iter().enumerate() {
        if let Some(&first) = by_id.get(&b.id) {
            return Err(MapError::DuplicateId {
                id: b.id,
                first: specs[first as usize].name.clone(),
                second: b.name.clone(),
            });
        }
        by_id.insert(b.id, i as u32);
        if let Some(&first) = by_name.get(b.name.as_str()) {
            return Err(MapError::DuplicateName {
                name: b.name.clone(),
                first,
                second: b.id,
            });
        }
        by_name.insert(&b.name, b.id);
    }
    Ok(by_id)
}

fn resolve_levels(levels: &[String], specs: &[BucketSpec]) -> Result<Vec<u16>, MapError> {
    let index: HashMap<&str, u16> = levels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i as u16))
        .collect();
    specs
        .iter()
        .map(|b| {
            index
                .get(b.level.as_str())
                .copied()
                .ok_or_else(|| MapError::UnknownLevel {
                    bucket: b.name.clone(),
                    level: b.level.clone(),
                })
        })
        .collect()
}

fn resolve_parents(
    specs: &[BucketSpec],
    by_id: &HashMap<u32, u32>,
) -> Result<Vec<Option<u32>>, MapError> {
    specs
        .iter()
        .map(|b| match b.parent {
            None => Ok(None),
            Some(p) => by_id
                .get(&p)
                .map(|&i| Some(i))
                .ok_or_else(|| MapError::UnknownParent {
                    bucket: b.name.clone(),
                    parent: p,
                }),
        })
        .collect()
}

/// Follows parent links from every bucket; meeting a bucket of the current walk is a cycle.
fn check_no_cycles(specs: &[BucketSpec], parent_of: &[Option<u32>]) -> Result<(), MapError> {
    const UNSEEN: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut mark = vec![UNSEEN; specs.len()];
    let mut path = Vec::new();
    for start in 0..specs.len() {
        let mut at = Some(start as u32);
        while let Some(i) = at {
            match mark[i as usize] {
                DONE => break,
                ON_PATH => {
                    return Err(MapError::Cycle {
                        bucket: specs[i as usize].name.clone(),
                    });
                }
                _ => {
                    mark[i as usize] = ON_PATH;
                    path.push(i);
                    at = parent_of[i as usize];
                }
            }
        }
        for i in path.drain(..) {
            mark[i as usize] = DONE;
        }
    }
    Ok(())
}

/// One root; every other bucket exactly one level below its parent. Returns the root.
fn check_tree_shape(
    levels: &[String],
    specs: &[BucketSpec],
    level_of: &[u16],
    parent_of: &[Option<u32>],
) -> Result<u32, MapError> {
    let mut root: Option<u32> = None;
    for (i, b) in specs.iter().enumerate() {
        let level = level_of[i];
        match (level, parent_of[i]) {
            (0, Some(_)) => {
                return Err(MapError::RootWithParent {
                    bucket: b.name.clone(),
                });
            }
            (0, None) => {
                if let Some(first) = root {
                    return Err(MapError::MultipleRoots {
                        first: specs[first as usize].name.clone(),
                        second: b.name.clone(),
                    });
                }
                root = Some(i as u32);
            }
            (_, None) => {
                return Err(MapError::MissingParent {
                    bucket: b.name.clone(),
                    level: levels[level as usize].clone(),
                    parent_level: levels[level as usize - 1].clone(),
                });
            }
            (_, Some(p)) => {
                let parent_level = level_of[p as usize];
                if parent_level + 1 != level {
                    return Err(MapError::WrongParentLevel {
                        bucket: b.name.clone(),
                        level: levels[level as usize].clone(),
                        parent: specs[p as usize].name.clone(),
                        parent_level: levels[parent_level as usize].clone(),
                        expected: levels[level as usize - 1].clone(),
                    });
                }
            }
        }
    }
    root.ok_or_else(|| MapError::NoRoot {
        level: levels[0].clone(),
    })
}

/// A disk's weight in fixed-point units, refusing zero, negative, non-finite and huge weights.
fn weight_units(disk: &BucketSpec) -> Result<u64, MapError> {
    let weight = disk.weight.ok_or_else(|| MapError::MissingWeight {
        disk: disk.name.clone(),
    })?;
    let bad = || MapError::BadWeight {
        disk: disk.name.clone(),
        weight,
        max: DISK_WEIGHT_MAX,
    };
    if !(weight.is_finite() && weight > 0.0 && weight <= DISK_WEIGHT_MAX) {
        return Err(bad());
    }
    let units = (weight * WEIGHT_UNITS_PER_WEIGHT as f64).round() as u64;
    if units == 0 {
        return Err(bad());
    }
    Ok(units)
}

/// Fills children, sums weights bottom-up and inherits states top-down.
fn finish_tree(buckets: &mut [Bucket]) {
    let mut by_level: Vec<u32> = (0..buckets.len() as u32).collect();
    by_level.sort_by_key(|&i| buckets[i as usize].level);
    for &i in &by_level {
        if let Some(p) = buckets[i as usize].parent {
            buckets[p as usize].children.push(i);
            let inherited = buckets[p as usize].state;
            let state = &mut buckets[i as usize].state;
            state.down |= inherited.down;
            state.out |= inherited.out;
            state.draining |= inherited.draining;
        }
    }
    for &i in by_level.iter().rev() {
        if let Some(p) = buckets[i as usize].parent {
            let w = buckets[i as usize].weight_units;
            buckets[p as usize].weight_units += w;
        }
    }
}
