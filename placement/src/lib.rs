//! Placement: for a cluster map and a pool, which ordered list of disks holds placement group
//! N. A pure library: no IO, no clock, no randomness beyond the pinned hash, no tokio, no
//! tonic, so every node computes the same answer from the same inputs.
//!
//! Reading order: `spec` (what goes in) → `map` (validation, the bucket hierarchy) → `line`
//! (the capacity line, why movement is minimal) → `select` (the straw2-style race) → `pool`,
//! `pgmap`, `overrides` → `balancer` and `diff` (what changes and what it costs) → `stats`.

pub mod balancer;
pub mod diff;
pub mod edit;
pub mod error;
pub mod hash;
mod line;
pub mod map;
pub mod overrides;
pub mod pgmap;
pub mod pool;
pub mod select;
pub mod spec;
pub mod stats;
pub mod synthetic;

pub use balancer::{BalancePlan, Move, balance};
pub use diff::{PgChange, PgMapDiff};
pub use edit::Edit;
pub use error::{MapError, PlacementError, RuleError};
pub use line::{BLOCKS_AT_GENESIS, BLOCKS_MAX, LINE_UNITS_MAX};
pub use map::{Bucket, ClusterMap};
pub use overrides::{Overrides, Remap};
pub use pgmap::PgMap;
pub use pool::Pool;
pub use select::Placer;
pub use spec::{BucketSpec, LineRange, MapSpec, PoolSpec, State, WEIGHT_UNITS_PER_WEIGHT};
pub use stats::{Balance, Violations};
