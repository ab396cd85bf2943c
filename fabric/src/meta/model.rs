//! The cluster's domain types: nodes, locations, pools, rules, volumes and attachments.
//!
//! These are what the state machine stores and what the rest of the daemon reasons about. They are
//! not wire types: the gRPC edge (`service::convert`) converts to and from `proto::meta`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A node's id; the same id names its Raft member.
pub type NodeId = u64;

/// Smallest unit of volume size: sizes are multiples of it.
pub const VOLUME_BLOCK_BYTES: u64 = 4096;
/// Extent size used when a create does not name one.
pub const EXTENT_SIZE_DEFAULT_BYTES: u64 = 4 << 20;
/// Largest extent size a pool accepts.
pub const EXTENT_SIZE_MAX_BYTES: u64 = 1 << 30;
/// Largest volume size accepted (1 PiB).
pub const VOLUME_SIZE_MAX_BYTES: u64 = 1 << 50;
/// Largest number of placement groups in one pool.
pub const PG_COUNT_MAX: u32 = 65_536;
/// Longest name of a pool or volume, in bytes.
pub const NAME_LEN_MAX: usize = 128;
/// Most replicas a rule may ask for.
pub const REPLICAS_MAX: u32 = 16;

const _: () = assert!(EXTENT_SIZE_DEFAULT_BYTES.is_multiple_of(VOLUME_BLOCK_BYTES));
const _: () = assert!(EXTENT_SIZE_DEFAULT_BYTES <= EXTENT_SIZE_MAX_BYTES);

/// Where a node sits in the fault-domain hierarchy, widest level first
/// (for example `row=r1,rack=r7,host=h3`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Location {
    pub levels: Vec<(String, String)>,
}

impl Location {
    /// The name of this location at `level`, if the location has that level.
    pub fn at(&self, level: &str) -> Option<&str> {
        self.levels
            .iter()
            .find(|(l, _)| l == level)
            .map(|(_, n)| n.as_str())
    }

    /// Whether every `level=name` pair of `filter` is part of this location.
    pub fn matches(&self, filter: &[(String, String)]) -> bool {
        filter.iter().all(|(l, n)| self.at(l) == Some(n.as_str()))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .levels
            .iter()
            .map(|(l, n)| format!("{l}={n}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A disk a node offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub name: String,
    pub capacity_bytes: u64,
}

/// Whether a node answers heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Up,
    Down,
}

/// Whether a node takes part in placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Participation {
    In,
    Out,
}

/// What a node says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub id: NodeId,
    pub rpc_addr: String,
    pub data_addr: String,
    pub location: Location,
    pub disks: Vec<DiskInfo>,
}

/// A node as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub registration: NodeRegistration,
    pub health: Health,
    pub participation: Participation,
    pub draining: bool,
    /// Wall-clock milliseconds of the last heartbeat, as stamped by the proposer.
    pub last_heartbeat_ms: u64,
}

/// Placement rule of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub replicas: u32,
    pub min_replicas: u32,
    /// Level of the hierarchy no two replicas may share (`rack`, `host`, ...).
    pub failure_domain: String,
    /// Only nodes whose location has all of these pairs.
    pub tag_filter: Vec<(String, String)>,
}

/// A pool as requested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub name: String,
    pub rule: Rule,
    pub pg_count: u32,
}

/// The ordered replica list of every placement group of a pool, at one epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgMap {
    /// The pool's own epoch: advances whenever any PG's replica list changes.
    pub epoch: u64,
    /// Epoch of the cluster map (placement's) this PG map was computed from.
    pub map_epoch: u64,
    /// `pgs[pg]` lists node ids, primary first.
    pub pgs: Vec<Vec<NodeId>>,
    /// `disks[pg]` lists the disks (placement bucket ids) of the same replicas, in order.
    pub disks: Vec<Vec<u32>>,
    /// `leaving[pg]`: replicas that placement moved away from `pg` but that stay in it (at
    /// the end of `pgs[pg]`, serving reads and taking writes) until the replicas that arrived
    /// in their place are current for every volume; see `meta::handover`.
    #[serde(default)]
    pub leaving: BTreeMap<u32, BTreeSet<NodeId>>,
}

impl PgMap {
    /// The replicas placement puts in `pg` (its list without the leaving ones).
    pub fn targets(&self, pg: u32) -> Vec<NodeId> {
        let leaving = self.leaving.get(&pg);
        self.pgs
            .get(pg as usize)
            .into_iter()
            .flatten()
            .copied()
            .filter(|n| leaving.is_none_or(|l| !l.contains(n)))
            .collect()
    }
}

/// A pool as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Placement's pool id: part of every PG's hash key.
    pub id: u32,
    pub spec: PoolSpec,
    pub map: PgMap,
    /// The balancer's exceptions to placement ("PG 7 uses disk 12 instead of disk 4"), applied
    /// on top of every PG map computed for the pool.
    #[serde(default)]
    pub overrides: placement::Overrides,
}

/// One replica of a PG moved from one disk to another (placement bucket ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMove {
    pub pg: u32,
    pub from_disk: u32,
    pub to_disk: u32,
}

/// A volume as requested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub pool: String,
    pub size_bytes: u64,
    pub extent_size_bytes: u64,
    /// Names this create across client retries; empty when the client does not retry.
    pub request_id: String,
}

/// Who holds a volume, and with which fencing epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub client: String,
    pub epoch: u64,
}

/// A volume as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: u64,
    pub spec: VolumeSpec,
    /// Highest attach epoch ever granted; the next attach gets a higher one.
    pub attach_epoch: u64,
    pub attachment: Option<Attachment>,
    /// `stale[pg]`: this volume's replicas in PG `pg` taken out of the acting set because they
    /// missed a write. They serve no reads and take no writes of this volume until they have
    /// caught up and are restored. Per volume, because each volume has its own writer: a
    /// replica current for one volume of a PG may be behind for another.
    #[serde(default)]
    pub stale: BTreeMap<u32, BTreeSet<NodeId>>,
    /// Stale replicas being brought up to date, as the volume's writer last reported them.
    #[serde(default)]
    pub rebuilding: Vec<RebuildProgress>,
    #[serde(default)]
    pub qos: VolumeQos,
    #[serde(default)]
    pub scrub: VolumeScrub,
}

/// A volume's scrubs: the one an operator asked for, and what each PG's last scrubs found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeScrub {
    /// `fabricctl scrub start`: every PG is to be scrubbed (deeply, if asked) after this.
    pub requested: Option<ScrubRequest>,
    /// Per PG that was ever scrubbed.
    pub pgs: BTreeMap<u32, PgScrub>,
}

/// A scrub an operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubRequest {
    pub deep: bool,
    /// When it was asked for, by the proposing member's clock (ms since the Unix epoch).
    pub at_ms: u64,
}

/// One PG's scrubs of a volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgScrub {
    /// When its last scrub (light or deep) started, by the scrubbing writer's clock.
    pub last_ms: u64,
    /// When its last deep scrub started; 0 if never.
    pub last_deep_ms: u64,
    /// What its last scrub found: bad blocks and divergent copies.
    pub errors: u64,
    /// Of those, repaired from a good copy.
    pub repaired: u64,
    /// Of those, left as they were (no good copy, or the repair failed).
    pub unrepaired: u64,
    /// Every error ever found and every repair ever made, over all its scrubs.
    pub errors_total: u64,
    pub repaired_total: u64,
}

/// What the scrub of one PG of a volume found, as its writer reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgScrubReport {
    pub pg: u32,
    pub errors: u64,
    pub repaired: u64,
    pub unrepaired: u64,
}

/// Weight of a volume that sets none.
pub const QOS_WEIGHT_DEFAULT: u32 = 100;
/// Largest weight a volume may have.
pub const QOS_WEIGHT_MAX: u32 = 10_000;

/// A volume's IO quality of service; 0 in a field means not set. Its limits are enforced
/// exactly by its gateway (a volume has one writer, so one place sees all of its IO); its
/// reservation and weight are honoured by the IO schedulers of the disks that hold its
/// replicas. A volume over its limit is slowed, never failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeQos {
    pub iops_limit: u64,
    pub bps_limit: u64,
    pub iops_reservation: u64,
    /// Its share of a busy disk against other volumes' and the background classes'
    /// ([`QOS_WEIGHT_DEFAULT`] when 0).
    pub weight: u32,
}

/// A volume's weight as set (0: not set, so [`QOS_WEIGHT_DEFAULT`]).
pub fn qos_weight(weight: u32) -> u32 {
    match weight {
        0 => QOS_WEIGHT_DEFAULT,
        w => w,
    }
}

impl VolumeQos {
    /// A usable QoS: the weight at most [`QOS_WEIGHT_MAX`], the reservation not above the limit.
    pub fn check(&self) -> Result<(), String> {
        if self.weight > QOS_WEIGHT_MAX {
            return Err(format!(
                "weight {} is above the largest, {QOS_WEIGHT_MAX}",
                self.weight
            ));
        }
        if self.iops_limit > 0 && self.iops_reservation > self.iops_limit {
            return Err(format!(
                "an IOPS reservation of {} is above the IOPS limit of {}",
                self.iops_reservation, self.iops_limit
            ));
        }
        Ok(())
    }
}

/// The QoS fields a `volume qos set` changes; the others keep their values (0 clears one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosChange {
    pub iops_limit: Option<u64>,
    pub bps_limit: Option<u64>,
    pub iops_reservation: Option<u64>,
    pub weight: Option<u32>,
}

impl QosChange {
    /// `qos` with this change made.
    pub fn applied_to(&self, qos: VolumeQos) -> VolumeQos {
        VolumeQos {
            iops_limit: self.iops_limit.unwrap_or(qos.iops_limit),
            bps_limit: self.bps_limit.unwrap_or(qos.bps_limit),
            iops_reservation: self.iops_reservation.unwrap_or(qos.iops_reservation),
            weight: self.weight.unwrap_or(qos.weight),
        }
    }
}

impl std::fmt::Display for QosChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = self.iops_limit {
            parts.push(format!("IOPS limit {n}"));
        }
        if let Some(n) = self.bps_limit {
            parts.push(format!("bytes/s limit {n}"));
        }
        if let Some(n) = self.iops_reservation {
            parts.push(format!("IOPS reservation {n}"));
        }
        if let Some(n) = self.weight {
            parts.push(format!("weight {n}"));
        }
        match parts.is_empty() {
            true => f.write_str("nothing"),
            false => f.write_str(&parts.join(", ")),
        }
    }
}

/// How far the resync of one stale replica has come.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildProgress {
    pub pg: u32,
    pub node: NodeId,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

impl Volume {
    /// The acting set of the volume in `pg`, given the PG's replicas: those not stale.
    pub fn acting(&self, pg: u32, replicas: &[NodeId]) -> Vec<NodeId> {
        let stale = self.stale.get(&pg);
        replicas
            .iter()
            .copied()
            .filter(|n| stale.is_none_or(|s| !s.contains(n)))
            .collect()
    }

    /// Forgets what the volume knew of `nodes` in PG `pg`, which left it: their stale marks
    /// and rebuild progress. Whether anything was forgotten.
    pub fn forget(&mut self, pg: u32, nodes: &BTreeSet<NodeId>) -> bool {
        let before = (
            self.stale.get(&pg).map_or(0, BTreeSet::len),
            self.rebuilding.len(),
        );
        if let Some(stale) = self.stale.get_mut(&pg) {
            stale.retain(|n| !nodes.contains(n));
            if stale.is_empty() {
                self.stale.remove(&pg);
            }
        }
        self.rebuilding
            .retain(|r| r.pg != pg || !nodes.contains(&r.node));
        before
            != (
                self.stale.get(&pg).map_or(0, BTreeSet::len),
                self.rebuilding.len(),
            )
    }
}
