//! Raw, serializable descriptions of a cluster map and of pools: what an operator or the
//! metadata store hands in. Nothing here is trusted; `ClusterMap::new` and `Pool::compile` turn
//! these into validated values or a typed error naming the offending item.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Fixed-point resolution of weights: one unit of weight (for example one TiB) is this many
/// weight units. Positions on the capacity line are counted in weight units.
pub const WEIGHT_UNITS_PER_WEIGHT: u64 = 1 << 16;

/// Largest weight one disk may have, in weight (not units).
pub const DISK_WEIGHT_MAX: f64 = 1_000_000.0;

/// A whole cluster map as stored: levels, buckets and the capacity-line layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapSpec {
    /// Incremented by every change; PG maps name the epoch they were computed from.
    pub epoch: u64,
    /// Bucket types from the root down to the leaves, for example
    /// `["root", "cell", "rack", "host", "disk"]`. The last level holds the disks.
    pub levels: Vec<String>,
    pub buckets: Vec<BucketSpec>,
    /// Size of one capacity block in weight units. `None` for a brand-new map: the validator
    /// picks it from the initial capacity and it never changes afterwards.
    #[serde(default)]
    pub block_units: Option<u64>,
}

/// One bucket: a disk (leaf level) or a grouping of buckets (any other level).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketSpec {
    /// Unique across all buckets of the map.
    pub id: u32,
    /// Unique, for humans and error messages.
    pub name: String,
    /// One of `MapSpec::levels`.
    pub level: String,
    /// `None` only for the single root; otherwise a bucket exactly one level up.
    pub parent: Option<u32>,
    /// Disks only: capacity, in any unit used consistently (TiB, say). Must be positive.
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub state: State,
    /// Free-form labels such as `jurisdiction=nl`; a disk inherits its ancestors' tags, the
    /// nearest definition of a key wins.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Disks only: where this disk sits on the capacity line. Empty for a new disk; the
    /// validator allocates what is missing and trims nothing.
    #[serde(default)]
    pub ranges: Vec<LineRange>,
}

/// Operator and failure-detector state of a bucket; a disk inherits every flag of its
/// ancestors (a rack marked out takes all of its disks out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Not responding. Placement ignores it (a flapping disk must not reshuffle data); the
    /// failure detector marks a disk out once it stays down.
    #[serde(default)]
    pub down: bool,
    /// Excluded from placement: its replicas are placed elsewhere.
    #[serde(default)]
    pub out: bool,
    /// Being emptied on purpose: excluded from placement like `out`, but still a valid source
    /// for copying its data away.
    #[serde(default)]
    pub draining: bool,
}

impl State {
    /// Whether a disk in this (effective) state may receive replicas.
    pub fn accepts_replicas(self) -> bool {
        !self.out && !self.draining
    }
}

/// A half-open range `[start, start + len)` of the capacity line, in weight units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRange {
    pub start: u64,
    pub len: u64,
}

impl LineRange {
    pub fn end(self) -> u64 {
        self.start + self.len
    }
}

/// A pool and its placement rule, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Part of every PG's hash key: two pools never share a layout pattern.
    pub id: u32,
    pub name: String,
    /// Replicas per PG.
    pub replicas: u32,
    /// Level name whose buckets no two replicas of a PG may share (for example `rack`).
    pub failure_domain: String,
    /// Only disks under this bucket (by id) are used. `None`: the whole map.
    #[serde(default)]
    pub subtree: Option<u32>,
    /// Only disks whose (inherited) tags carry all of these key/value pairs are used.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Number of placement groups; PG ids are `0..pg_count`.
    pub pg_count: u32,
}
