//! Changes to a cluster map. An edit batch produces the next epoch's map and keeps the
//! capacity-line layout of everything it does not touch, which is what keeps data movement
//! minimal (see `line`).

use std::collections::BTreeMap;

use crate::error::MapError;
use crate::map::ClusterMap;
use crate::spec::{BucketSpec, LineRange, State, WEIGHT_UNITS_PER_WEIGHT};

/// One change to a cluster map.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Adds a bucket; a new disk gets its capacity-line ranges when the map is validated.
    AddBucket(BucketSpec),
    /// Removes a bucket without children. A removed disk leaves a hole in the line.
    RemoveBucket { id: u32 },
    /// Sets a disk's weight: shrinking trims its last ranges, growing allocates more.
    SetWeight { disk: u32, weight: f64 },
    /// Replaces a bucket's own state (up/down, in/out, draining).
    SetState { bucket: u32, state: State },
    /// Replaces a bucket's own tags.
    SetTags {
        bucket: u32,
        tags: BTreeMap<String, String>,
    },
}

impl ClusterMap {
    /// Applies `edits` in order and returns the map of the next epoch.
    pub fn apply(&self, edits: &[Edit]) -> Result<ClusterMap, MapError> {
        let mut spec = self.to_spec();
        spec.epoch += 1;
        for edit in edits {
            apply_one(&mut spec.buckets, edit)?;
        }
        ClusterMap::new(spec)
    }
}

fn find(buckets: &[BucketSpec], id: u32) -> Result<usize, MapError> {
    buckets
        .iter()
        .position(|b| b.id == id)
        .ok_or(MapError::EditUnknownBucket { id })
}

fn apply_one(buckets: &mut Vec<BucketSpec>, edit: &Edit) -> Result<(), MapError> {
    match edit {
        Edit::AddBucket(bucket) => buckets.push(bucket.clone()),
        Edit::RemoveBucket { id } => {
            let at = find(buckets, *id)?;
            if buckets.iter().any(|b| b.parent == Some(*id)) {
                return Err(MapError::RemoveNonEmpty {
                    bucket: buckets[at].name.clone(),
                });
            }
            buckets.remove(at);
        }
        Edit::SetWeight { disk, weight } => {
            let at = find(buckets, *disk)?;
            let bucket = &mut buckets[at];
            if bucket.weight.is_none() {
                return Err(MapError::SetWeightOnInternalBucket {
                    bucket: bucket.name.clone(),
                });
            }
            bucket.weight = Some(*weight);
            // An invalid weight is reported by validation; only a valid one reshapes the layout.
            if weight.is_finite() && *weight > 0.0 {
                let units = (weight * WEIGHT_UNITS_PER_WEIGHT as f64).round() as u64;
                trim_to(&mut bucket.ranges, units);
            }
        }
        Edit::SetState { bucket, state } => {
            let at = find(buckets, *bucket)?;
            buckets[at].state = *state;
        }
        Edit::SetTags { bucket, tags } => {
            let at = find(buckets, *bucket)?;
            buckets[at].tags = tags.clone();
        }
    }
    Ok(())
}

/// Shrinks a layout to at most `units`, giving up the highest positions first (they are the
/// most recently allocated, so older placements stay where they are).
fn trim_to(ranges: &mut Vec<LineRange>, units: u64) {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut covered: u64 = ranges.iter().map(|r| r.len).sum();
    while covered > units {
        let last = ranges.last_mut().expect("covered > 0 means a range exists");
        let cut = (covered - units).min(last.len);
        last.len -= cut;
        covered -= cut;
        if last.len == 0 {
            ranges.pop();
        }
    }
}
