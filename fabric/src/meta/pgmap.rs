//! The seam between the metadata state machine and `placement`: the registered nodes become a
//! placement cluster map ([`Topology`]), and a pool's rule compiled against that map gives the
//! pool's PG map.
//!
//! The map's capacity-line layout is allocated by `placement` and must never be recomputed
//! from scratch (that is what keeps data movement minimal), so the map's full [`MapSpec`] lives
//! in the replicated state and evolves by `ClusterMap::apply` with the edits that turn the
//! recorded buckets into the ones the current nodes describe. Everything here is a pure
//! function of the replicated state, so every member computes the same map and PG maps.
//!
//! Hierarchy: `root` → `cell` → `row` → `rack` → `host` → `node` → `disk`. A node's location
//! names some of `cell`, `row`, `rack`, `host`; a level it leaves out is a shared default bucket
//! when a narrower level is given (nodes of rack `r1` share one row), and the node's own bucket
//! otherwise (a node without a host is its own host). Each location bucket carries its
//! `level=name` pair as a tag, so a rule's tag filter matches what the node declared.

use std::collections::{BTreeMap, BTreeSet};

use placement::{BucketSpec, ClusterMap, Edit, MapSpec, Overrides, State, WEIGHT_UNITS_PER_WEIGHT};
use serde::{Deserialize, Serialize};

use super::command::CommandError;
use super::model::{NodeId, NodeRecord, NodeRegistration, Participation, PgMap, Rule};

/// Levels of the placement hierarchy, root first.
pub const LEVELS: [&str; 7] = ["root", "cell", "row", "rack", "host", "node", "disk"];
/// The levels a node's location may name, widest first.
pub const LOCATION_LEVELS: [&str; 4] = ["cell", "row", "rack", "host"];
/// Bytes of capacity per unit of placement weight (weights are in TiB).
pub const WEIGHT_BYTES: u64 = 1 << 40;
/// Smallest disk that can take part in placement: one weight unit.
pub const DISK_BYTES_MIN: u64 = WEIGHT_BYTES / WEIGHT_UNITS_PER_WEIGHT;
/// Largest disk accepted (1 EiB), far below placement's weight limit.
pub const DISK_BYTES_MAX: u64 = 1 << 60;
/// Most disks one node may register.
pub const DISKS_PER_NODE_MAX: usize = 64;
/// Prefix of names the daemon makes up for levels a location leaves out; refused in locations.
const SYNTHETIC: char = '~';

const _: () = assert!(DISK_BYTES_MIN > 0 && WEIGHT_BYTES.is_multiple_of(WEIGHT_UNITS_PER_WEIGHT));
const _: () = assert!(LEVELS.len() == LOCATION_LEVELS.len() + 3);

/// An operator's labels of locations: `level=value` (such as `row=r1`) → labels (such as
/// `jurisdiction=de`), which every bucket at that location carries as tags.
pub type Labels = BTreeMap<String, BTreeMap<String, String>>;

/// The placement view of the cluster, part of the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// The cluster map with its capacity-line layout; `None` until the first disk registers,
    /// because the line's block size is fixed from the capacity present at that moment.
    pub map: Option<MapSpec>,
    /// Next bucket id to hand out; ids are never reused.
    pub next_bucket_id: u32,
    /// Disk bucket id → the node that owns it.
    pub disk_owner: BTreeMap<u32, NodeId>,
}

/// Refuses registrations the placement hierarchy cannot hold.
pub fn validate_registration(r: &NodeRegistration) -> Result<(), CommandError> {
    let bad = |m: String| Err(CommandError::InvalidArgument(format!("node {}: {m}", r.id)));
    for (level, name) in &r.location.levels {
        if !LOCATION_LEVELS.contains(&level.as_str()) {
            return bad(format!(
                "location level {level:?} is not one of {}",
                LOCATION_LEVELS.join(", ")
            ));
        }
        if name.is_empty() || name.starts_with(SYNTHETIC) || name.contains('/') {
            return bad(format!(
                "location name {name:?} must be non-empty, without '/' and not start with '{SYNTHETIC}'"
            ));
        }
    }
    if r.disks.len() > DISKS_PER_NODE_MAX {
        return bad(format!(
            "{} disks; at most {DISKS_PER_NODE_MAX} are supported",
            r.disks.len()
        ));
    }
    let mut names = BTreeSet::new();
    for d in &r.disks {
        if d.name.is_empty() || !names.insert(d.name.as_str()) {
            return bad(format!("disk name {:?} is empty or repeated", d.name));
        }
        if !(DISK_BYTES_MIN..=DISK_BYTES_MAX).contains(&d.capacity_bytes) {
            return bad(format!(
                "disk {} has {} bytes; {DISK_BYTES_MIN}..={DISK_BYTES_MAX} are supported",
                d.name, d.capacity_bytes
            ));
        }
    }
    Ok(())
}

/// A bucket as the current nodes describe it (id not yet known).
struct Wanted {
    name: String,
    level: usize,
    parent: Option<String>,
    weight: Option<f64>,
    state: State,
    tags: BTreeMap<String, String>,
    owner: Option<NodeId>,
}

/// Weight of a disk: its capacity in whole weight units, as an exactly representable f64.
fn weight_of(capacity_bytes: u64) -> f64 {
    let units = capacity_bytes / DISK_BYTES_MIN;
    units as f64 / WEIGHT_UNITS_PER_WEIGHT as f64
}

/// Every bucket the nodes describe, keyed by name, parents before children.
fn wanted_buckets(nodes: &BTreeMap<NodeId, NodeRecord>, labels: &Labels) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut push = |out: &mut Vec<Wanted>, w: Wanted| {
        if seen.insert(w.name.clone()) {
            out.push(w);
        }
    };
    push(
        &mut out,
        Wanted {
            name: "root".into(),
            level: 0,
            parent: None,
            weight: None,
            state: State::default(),
            tags: BTreeMap::new(),
            owner: None,
        },
    );
    for (id, node) in nodes {
        let r = &node.registration;
        if r.disks.is_empty() {
            continue;
        }
        let narrowest = LOCATION_LEVELS
            .iter()
            .rposition(|l| r.location.at(l).is_some());
        let mut parent = "root".to_string();
        for (i, level) in LOCATION_LEVELS.iter().enumerate() {
            let (value, declared) = match r.location.at(level) {
                Some(v) => (v.to_string(), true),
                None if narrowest.is_some_and(|n| i < n) => (SYNTHETIC.to_string(), false),
                None => (format!("{SYNTHETIC}node-{id}"), false),
            };
            let name = format!("{parent}/{level}={value}");
            let mut tags = BTreeMap::new();
            if declared {
                // An operator's labels of this location (`jurisdiction=de` on `row=r1`) are
                // the bucket's tags too, inherited by every disk under it.
                if let Some(l) = labels.get(&format!("{level}={value}")) {
                    tags.extend(l.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                tags.insert(level.to_string(), value);
            }
            push(
                &mut out,
                Wanted {
                    name: name.clone(),
                    level: i + 1,
                    parent: Some(parent),
                    weight: None,
                    state: State::default(),
                    tags,
                    owner: None,
                },
            );
            parent = name;
        }
        // The path is part of every name, so a node that moves is a new bucket (and the old
        // one goes), never a bucket whose parent changes.
        let node_name = format!("{parent}/node={id}");
        push(
            &mut out,
            Wanted {
                name: node_name.clone(),
                level: LEVELS.len() - 2,
                parent: Some(parent),
                weight: None,
                state: State {
                    // Placement ignores `down`; the failure detector's verdict stays in the
                    // node record, so that marking nodes down never remaps a pool.
                    down: false,
                    out: node.participation == Participation::Out,
                    draining: node.draining,
                },
                tags: BTreeMap::new(),
                owner: None,
            },
        );
        for d in &r.disks {
            push(
                &mut out,
                Wanted {
                    name: format!("{node_name}/disk={}", d.name),
                    level: LEVELS.len() - 1,
                    parent: Some(node_name.clone()),
                    weight: Some(weight_of(d.capacity_bytes)),
                    state: State::default(),
                    tags: BTreeMap::new(),
                    owner: Some(*id),
                },
            );
        }
    }
    out.sort_by_key(|w| w.level);
    out
}

fn map_error(e: placement::MapError) -> CommandError {
    CommandError::InvalidArgument(format!("cluster map: {e}"))
}

impl Topology {
    /// The validated map, if any disk was ever registered.
    pub fn cluster_map(&self) -> Result<Option<ClusterMap>, CommandError> {
        self.map
            .clone()
            .map(ClusterMap::new)
            .transpose()
            .map_err(map_error)
    }

    /// The topology the nodes describe now, evolved from this one; `None` if nothing changed.
    pub fn evolve(
        &self,
        nodes: &BTreeMap<NodeId, NodeRecord>,
        labels: &Labels,
    ) -> Result<Option<Topology>, CommandError> {
        let wanted = wanted_buckets(nodes, labels);
        let current: BTreeMap<&str, &BucketSpec> = self
            .map
            .iter()
            .flat_map(|m| &m.buckets)
            .map(|b| (b.name.as_str(), b))
            .collect();
        let mut next_id = self.next_bucket_id;
        let mut ids: BTreeMap<&str, u32> = current.iter().map(|(n, b)| (*n, b.id)).collect();
        let mut disk_owner = BTreeMap::new();
        let mut edits = Vec::new();
        let mut fresh = Vec::new();
        for w in &wanted {
            let id = match ids.get(w.name.as_str()) {
                Some(id) => *id,
                None => {
                    let id = next_id;
                    next_id = next_id.checked_add(1).ok_or_else(|| {
                        CommandError::FailedPrecondition("bucket ids ran out".into())
                    })?;
                    ids.insert(&w.name, id);
                    id
                }
            };
            if let Some(owner) = w.owner {
                disk_owner.insert(id, owner);
            }
            let spec = BucketSpec {
                id,
                name: w.name.clone(),
                level: LEVELS[w.level].to_string(),
                parent: w.parent.as_ref().map(|p| ids[p.as_str()]),
                weight: w.weight,
                state: w.state,
                tags: w.tags.clone(),
                ranges: Vec::new(),
            };
            match current.get(w.name.as_str()) {
                None => {
                    edits.push(Edit::AddBucket(spec.clone()));
                    fresh.push(spec);
                }
                Some(old) => {
                    if old.weight != spec.weight
                        && let Some(weight) = spec.weight
                    {
                        edits.push(Edit::SetWeight { disk: id, weight });
                    }
                    if old.state != spec.state {
                        edits.push(Edit::SetState {
                            bucket: id,
                            state: spec.state,
                        });
                    }
                    if old.tags != spec.tags {
                        edits.push(Edit::SetTags {
                            bucket: id,
                            tags: spec.tags.clone(),
                        });
                    }
                }
            }
        }
        // Buckets nobody describes any more go, children before parents.
        let wanted_names: BTreeSet<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
        let mut gone: Vec<&BucketSpec> = current
            .values()
            .filter(|b| !wanted_names.contains(b.name.as_str()))
            .copied()
            .collect();
        gone.sort_by_key(|b| {
            std::cmp::Reverse(LEVELS.iter().position(|l| *l == b.level).unwrap_or(0))
        });
        edits.extend(gone.iter().map(|b| Edit::RemoveBucket { id: b.id }));

        if edits.is_empty() {
            return Ok(None);
        }
        let map = match self.cluster_map()? {
            Some(map) => map.apply(&edits).map_err(map_error)?,
            None if disk_owner.is_empty() => return Ok(None),
            None => ClusterMap::new(MapSpec {
                epoch: 1,
                levels: LEVELS.iter().map(|l| l.to_string()).collect(),
                buckets: fresh,
                block_units: None,
            })
            .map_err(map_error)?,
        };
        Ok(Some(Topology {
            map: Some(map.to_spec()),
            next_bucket_id: next_id,
            disk_owner,
        }))
    }

    /// The cluster map and pool `pool_id` compiled under `rule` on it. An unsatisfiable rule
    /// is a `FailedPrecondition` naming the pool.
    pub fn placement_pool(
        &self,
        pool_id: u32,
        name: &str,
        rule: &Rule,
        pg_count: u32,
    ) -> Result<(ClusterMap, placement::Pool), CommandError> {
        let map = self.cluster_map()?.ok_or_else(|| {
            CommandError::FailedPrecondition(format!("pool {name}: no node has registered a disk"))
        })?;
        let spec = placement::PoolSpec {
            id: pool_id,
            name: name.to_string(),
            replicas: rule.replicas,
            failure_domain: rule.failure_domain.clone(),
            subtree: None,
            tags: rule.tag_filter.iter().cloned().collect(),
            pg_count,
        };
        let pool = placement::Pool::compile(&spec, &map).map_err(|e| match e {
            placement::RuleError::Unsatisfiable { .. } => {
                CommandError::FailedPrecondition(e.to_string())
            }
            _ => CommandError::InvalidArgument(e.to_string()),
        })?;
        Ok((map, pool))
    }

    /// The PG map of pool `pool_id` under `rule` with the balancer's `overrides`, computed on
    /// the current cluster map: where placement puts every replica, without the replicas
    /// still leaving their PGs.
    pub fn pg_map(
        &self,
        pool_id: u32,
        name: &str,
        rule: &Rule,
        pg_count: u32,
        overrides: &Overrides,
    ) -> Result<PgMap, CommandError> {
        let (map, pool) = self.placement_pool(pool_id, name, rule, pg_count)?;
        // Overrides are kept only for the pool they were written for.
        let overrides = (overrides.pool == pool_id).then_some(overrides);
        let computed = placement::PgMap::compute(&map, &pool, overrides)
            .map_err(|e| CommandError::FailedPrecondition(e.to_string()))?;
        Ok(self.named(&computed))
    }

    /// `computed` with every replica named by its node as well as its disk.
    pub fn named(&self, computed: &placement::PgMap) -> PgMap {
        let disks: Vec<Vec<u32>> = computed.iter().map(|(_, r)| r.to_vec()).collect();
        let pgs = disks
            .iter()
            .map(|r| r.iter().map(|d| self.disk_owner[d]).collect())
            .collect();
        PgMap {
            epoch: 0,
            map_epoch: computed.epoch(),
            pgs,
            disks,
            leaving: BTreeMap::new(),
        }
    }
}
