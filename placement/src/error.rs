//! Typed errors. Each names the offending bucket, pool or PG, so an operator can fix the input
//! without reading code. Placement never panics on bad input: panics are for bugs only.

use thiserror::Error;

/// Why a cluster map (or an edit of one) was rejected.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum MapError {
    #[error("the map needs at least {min} levels (a root and a disk level), got {got}")]
    TooFewLevels { got: usize, min: usize },
    #[error("the map has {got} levels; at most {max} are supported")]
    TooManyLevels { got: usize, max: usize },
    #[error("level name `{level}` is empty or listed twice")]
    BadLevelName { level: String },
    #[error("the map has {got} buckets; at most {max} are supported")]
    TooManyBuckets { got: usize, max: usize },
    #[error("bucket id {id} is used by both `{first}` and `{second}`")]
    DuplicateId {
        id: u32,
        first: String,
        second: String,
    },
    #[error("bucket name `{name}` is used twice (ids {first} and {second})")]
    DuplicateName {
        name: String,
        first: u32,
        second: u32,
    },
    #[error("bucket `{bucket}` has level `{level}`, which is not one of the map's levels")]
    UnknownLevel { bucket: String, level: String },
    #[error("the map has no root bucket (a bucket of level `{level}` without parent)")]
    NoRoot { level: String },
    #[error("the map has two roots, `{first}` and `{second}`; exactly one is allowed")]
    MultipleRoots { first: String, second: String },
    #[error("root-level bucket `{bucket}` must not have a parent")]
    RootWithParent { bucket: String },
    #[error("bucket `{bucket}` ({level}) is not inside any {parent_level}")]
    MissingParent {
        bucket: String,
        level: String,
        parent_level: String,
    },
    #[error("bucket `{bucket}` names parent id {parent}, which does not exist")]
    UnknownParent { bucket: String, parent: u32 },
    #[error("bucket `{bucket}` is part of a parent cycle")]
    Cycle { bucket: String },
    #[error(
        "bucket `{bucket}` ({level}) sits under `{parent}` ({parent_level}); expected a {expected}"
    )]
    WrongParentLevel {
        bucket: String,
        level: String,
        parent: String,
        parent_level: String,
        expected: String,
    },
    #[error("disk `{disk}` has no weight")]
    MissingWeight { disk: String },
    #[error(
        "disk `{disk}` has weight {weight}; weights must be positive, finite and at most {max}"
    )]
    BadWeight { disk: String, weight: f64, max: f64 },
    #[error("bucket `{bucket}` is not a disk and must not carry a weight or a layout")]
    WeightOnInternalBucket { bucket: String },
    #[error("disk `{disk}` has an empty layout range at {start}")]
    EmptyRange { disk: String, start: u64 },
    #[error("disks `{first}` and `{second}` overlap on the capacity line at {at}")]
    RangeOverlap {
        first: String,
        second: String,
        at: u64,
    },
    #[error(
        "disk `{disk}` covers {layout_units} units of the capacity line but weighs only {weight_units}"
    )]
    LayoutExceedsWeight {
        disk: String,
        layout_units: u64,
        weight_units: u64,
    },
    #[error("block size must be positive")]
    ZeroBlock,
    #[error(
        "the capacity line needs {blocks} blocks; at most {max} are supported (re-layout the map)"
    )]
    TooManyBlocks { blocks: u64, max: u64 },
    #[error("the capacity line would exceed {max} weight units")]
    LineTooLong { max: u64 },
    #[error("edit names bucket id {id}, which does not exist")]
    EditUnknownBucket { id: u32 },
    #[error("bucket `{bucket}` still has children; remove them first")]
    RemoveNonEmpty { bucket: String },
    #[error("bucket `{bucket}` is not a disk, so it has no weight to set")]
    SetWeightOnInternalBucket { bucket: String },
}

/// Why a pool's rule cannot be used with a map.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum RuleError {
    #[error("pool `{pool}` asks for failure domain `{level}`, which is not a level of the map")]
    UnknownLevel { pool: String, level: String },
    #[error("pool `{pool}` names subtree bucket id {bucket}, which does not exist")]
    UnknownSubtree { pool: String, bucket: u32 },
    #[error("pool `{pool}` asks for {replicas} replicas; 1 to {max} are supported")]
    BadReplicaCount {
        pool: String,
        replicas: u32,
        max: u32,
    },
    #[error("pool `{pool}` has {pg_count} PGs; 1 to {max} are supported")]
    BadPgCount {
        pool: String,
        pg_count: u32,
        max: u32,
    },
    #[error(
        "pool `{pool}` needs {needed} distinct {level}s with usable disks, but only {available} exist{detail}"
    )]
    Unsatisfiable {
        pool: String,
        level: String,
        needed: u32,
        available: u32,
        detail: String,
    },
}

/// Why a PG could not be mapped or a PG map could not be used.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum PlacementError {
    #[error("pool `{pool}` was compiled for map epoch {pool_epoch}, not {map_epoch}")]
    StaleRule {
        pool: String,
        pool_epoch: u64,
        map_epoch: u64,
    },
    #[error("pool `{pool}` PG {pg} is out of range (pg_count {pg_count})")]
    PgOutOfRange {
        pool: String,
        pg: u32,
        pg_count: u32,
    },
    #[error("pool `{pool}` PG {pg}: no placement after {attempts} draws (rule too selective)")]
    DrawsExhausted {
        pool: String,
        pg: u32,
        attempts: u32,
    },
    #[error(
        "PG map of pool {pool} is from epoch {pgmap_epoch} but the map is at {map_epoch}, or names disks it lacks"
    )]
    StalePgMap {
        pool: u32,
        pgmap_epoch: u64,
        map_epoch: u64,
    },
    #[error(
        "PG maps of pool {first_pool} and {second_pool} ({first_pgs} and {second_pgs} PGs) cannot be compared"
    )]
    Incomparable {
        first_pool: u32,
        second_pool: u32,
        first_pgs: u32,
        second_pgs: u32,
    },
}
