//! The replicated cluster state and its pure, deterministic `apply`.
//!
//! No IO, no clock, no randomness: the same commands in the same order give the same state on
//! every member. A refused command returns a [`CommandError`] and leaves the state untouched.
//!
//! A volume's membership changes (which replicas are current, its rebuild progress, its
//! detach) are fenced by the attach epoch they carry: only the volume's latest attach may make
//! them. A writer whose attach was superseded may have missed the new writer's writes, so its
//! word on which replica caught up no longer holds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::changes::{Change, Journal};
use super::command::{Applied, Command, CommandError, CommandV1, FENCED_WORDS, Outcome};
use super::handover::{self, Remapped};
use super::model::{
    Attachment, EXTENT_SIZE_MAX_BYTES, Health, NAME_LEN_MAX, NodeId, NodeRecord, NodeRegistration,
    PG_COUNT_MAX, Participation, PgMap, Pool, PoolSpec, REPLICAS_MAX, RebuildProgress,
    VOLUME_BLOCK_BYTES, VOLUME_SIZE_MAX_BYTES, Volume, VolumeSpec,
};
use super::pgmap::{Topology, validate_registration};

/// Everything the metadata group agrees on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// The placement cluster map the nodes form, with its capacity-line layout.
    pub topology: Topology,
    pub next_pool_id: u32,
    pub pools: BTreeMap<String, Pool>,
    pub volumes: BTreeMap<String, Volume>,
    pub next_volume_id: u64,
    /// Advances on every applied change.
    pub cluster_epoch: u64,
    /// Outcomes of recent `Once` commands, by request id.
    #[serde(default)]
    pub requests: RequestLog,
    /// Who may do what (epoch 0: not initialized, nobody but members may do anything).
    #[serde(default)]
    pub policy: super::auth::Policy,
    /// The keys attach capabilities are signed with, newest last (see `cell_key`).
    #[serde(default)]
    pub cell_keys: Vec<super::cell_key::CellKey>,
    /// Revoked certificates by serial (see `state_revoked`).
    #[serde(default)]
    pub revoked: BTreeMap<String, super::state_revoked::Revoked>,
    /// The CA's certificate chain of each cell key (verifying key hex → PEM), for verifying
    /// audit checkpoints offline.
    #[serde(default)]
    pub cell_key_certs: BTreeMap<String, String>,
    /// Every mutating and every refused call (see `state_audit`).
    #[serde(default)]
    pub audit: crate::audit::log::AuditLog,
    /// What needs a second person, and the requests waiting for one (see `state_approval`).
    #[serde(default)]
    pub guards: super::state_approval::Guards,
    #[serde(default)]
    pub approvals: super::state_approval::Requests,
    /// Operators' labels of locations, such as `jurisdiction=de` on `row=r1` (see
    /// `state_residency`).
    #[serde(default)]
    pub labels: super::pgmap::Labels,
    /// Each node's desired state for drift detection, and operators' exceptions (see
    /// `meta::drift`).
    #[serde(default)]
    pub drift_desired: BTreeMap<NodeId, BTreeMap<String, String>>,
    #[serde(default)]
    pub drift_exceptions: BTreeMap<String, super::drift::DriftException>,
    /// Join tokens by id, until they expire (see `state_join`).
    #[serde(default)]
    pub join_tokens: BTreeMap<String, super::state_join::JoinTokenRecord>,
    /// The root CAs every process trusts, PEM, oldest first (none: each its own `ca.pem`; see
    /// `state_trust`).
    #[serde(default)]
    pub trust_roots: Vec<String>,
    /// Inference models and jobs (see `meta::infer`).
    #[serde(default)]
    pub infer: super::infer::model::InferState,
    /// Which records recent commands changed, for `Watch` deltas (derived, never stored).
    #[serde(skip)]
    pub journal: Journal,
}

/// Most request ids whose outcome the state remembers; the oldest is forgotten first. A retry
/// comes within seconds of its request, so thousands cover any burst of clients.
pub const REQUESTS_REMEMBERED_MAX: usize = 4096;

/// The outcomes of the last [`REQUESTS_REMEMBERED_MAX`] `Once` commands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestLog {
    outcomes: BTreeMap<String, Outcome>,
    /// Request ids, oldest first.
    order: std::collections::VecDeque<String>,
}

impl RequestLog {
    /// Outcomes remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn get(&self, request_id: &str) -> Option<&Outcome> {
        self.outcomes.get(request_id)
    }

    fn remember(&mut self, request_id: &str, outcome: Outcome) {
        if self
            .outcomes
            .insert(request_id.to_owned(), outcome)
            .is_none()
        {
            self.order.push_back(request_id.to_owned());
        }
        while self.order.len() > REQUESTS_REMEMBERED_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.outcomes.remove(&oldest);
            }
        }
    }
}

impl ClusterState {
    /// How many records a snapshot of the state holds: nodes, PGs of every pool, volumes and
    /// remembered request outcomes. What building a snapshot costs grows with it.
    pub fn records(&self) -> u64 {
        let pgs: usize = self.pools.values().map(|p| p.map.pgs.len()).sum();
        (self.nodes.len() + pgs + self.volumes.len() + self.requests.len()) as u64
            + self.audit.held()
    }

    /// Applies one command. On error nothing changed (except that a `Once` command's outcome
    /// is remembered, so that its retry gets the same answer).
    pub fn apply(&mut self, command: &Command) -> Outcome {
        let Command::V1(c) = command;
        let CommandV1::Once {
            request_id,
            command,
        } = c
        else {
            return self.apply_one(c);
        };
        if request_id.is_empty() {
            return Err(CommandError::InvalidArgument("empty request id".into()));
        }
        if let Some(first) = self.requests.get(request_id) {
            return first.clone();
        }
        let outcome = self.apply_one(command);
        self.requests.remember(request_id, outcome.clone());
        outcome
    }

    /// One command, or one audited call: its entry is appended whatever the outcome.
    fn apply_one(&mut self, c: &CommandV1) -> Outcome {
        match c {
            CommandV1::Audited { call, command } => self.apply_audited(call, command),
            CommandV1::AuditDenied { call, reason } => self.audit_denied(call, reason),
            _ => self.apply_v1(c),
        }
    }

    pub(super) fn apply_v1(&mut self, c: &CommandV1) -> Outcome {
        let outcome = match c {
            CommandV1::RegisterNode(r) => self.register_node(r),
            CommandV1::Heartbeat { node, at_ms } => self.heartbeat(*node, *at_ms),
            CommandV1::SetHealth { node, health } => self.set_health(*node, *health),
            CommandV1::SetDraining { node, draining } => self.set_draining(*node, *draining),
            CommandV1::Rebalance {
                pool,
                pool_epoch,
                moves,
            } => self.rebalance(pool, *pool_epoch, moves),
            CommandV1::CreatePool(spec) => self.create_pool(spec),
            CommandV1::CreateVolume(spec) => self.create_volume(spec),
            CommandV1::ResizeVolume { name, size_bytes } => self.resize_volume(name, *size_bytes),
            CommandV1::SetVolumeQos { name, change } => self.set_volume_qos(name, change),
            CommandV1::RequestScrub { name, deep, at_ms } => {
                self.request_scrub(name, *deep, *at_ms)
            }
            CommandV1::Infer(c) => self.apply_infer(c),
            CommandV1::ReportScrub {
                volume,
                attach_epoch,
                deep,
                started_ms,
                pgs,
                fulfils,
            } => self
                .check_attach_epoch(volume, *attach_epoch)
                .and_then(|()| self.report_scrub(volume, *deep, *started_ms, pgs, *fulfils)),
            CommandV1::DeleteVolume { name } => self.delete_volume(name),
            CommandV1::DeletePool { name } => self.delete_pool(name),
            CommandV1::AttachVolume {
                name,
                client,
                force,
            } => self.attach_volume(name, client, *force),
            CommandV1::DetachVolume { name, client } => self.detach_volume(name, client),
            CommandV1::RemoveReplica { volume, pg, node } => {
                self.remove_replica(volume, *pg, *node)
            }
            CommandV1::RestoreReplica { volume, pg, node } => {
                self.restore_replica(volume, *pg, *node)
            }
            CommandV1::SetParticipation {
                node,
                participation,
            } => self.set_participation(*node, *participation),
            CommandV1::ReportRebuild { volume, progress } => self.report_rebuild(volume, progress),
            CommandV1::RemoveReplicaV2 {
                volume,
                pg,
                node,
                attach_epoch,
            } => self
                .check_attach_epoch(volume, *attach_epoch)
                .and_then(|()| self.remove_replica(volume, *pg, *node)),
            CommandV1::RestoreReplicaV2 {
                volume,
                pg,
                node,
                attach_epoch,
            } => self
                .check_attach_epoch(volume, *attach_epoch)
                .and_then(|()| self.restore_replica(volume, *pg, *node)),
            CommandV1::ReportRebuildV2 {
                volume,
                progress,
                attach_epoch,
            } => self
                .check_attach_epoch(volume, *attach_epoch)
                .and_then(|()| self.report_rebuild(volume, progress)),
            CommandV1::DetachVolumeV2 {
                name,
                client,
                attach_epoch,
            } => self
                .check_attach_epoch(name, *attach_epoch)
                .and_then(|()| self.detach_volume(name, client)),
            CommandV1::Once { .. } => Err(CommandError::InvalidArgument(
                "a request id wraps one plain command".into(),
            )),
            CommandV1::InitPolicy {
                admin,
                guards_off,
                approvers,
            } => self.init_policy(admin, *guards_off, approvers),
            CommandV1::ChangePolicy { by, change } => self.change_policy(by, change),
            CommandV1::AddCellKey(key) => self.add_cell_key(key),
            CommandV1::RevokeCertificate(r) => self.revoke_certificate(r),
            CommandV1::AddJoinToken(t) => self.add_join_token(t),
            CommandV1::Audited { .. } | CommandV1::AuditDenied { .. } => Err(
                CommandError::InvalidArgument("an audited call is not nested".into()),
            ),
            CommandV1::AuditCheckpoint { time_ms } => self.audit_checkpoint(*time_ms),
            CommandV1::Noted => Ok(Applied::Nothing),
            CommandV1::RequestApproval { .. } => Err(CommandError::InvalidArgument(
                "an approval request is made by an audited call".into(),
            )),
            CommandV1::Approve { id, op_sha256, by } => self.approve(by, id, op_sha256),
            CommandV1::DenyRequest { id, reason, by } => self.deny_request(by, id, reason),
            CommandV1::SetGuard { guard, on } => self.set_guard(guard, *on),
            CommandV1::SetApprovalTtl { ttl_ms } => self.set_approval_ttl(*ttl_ms),
            CommandV1::SetLabels { location, labels } => self.set_labels(location, labels),
            CommandV1::SetDriftBaseline { node, items } => self.set_drift_baseline(*node, items),
            CommandV1::ExceptDrift(e) => self.except_drift(e),
            CommandV1::AcceptDrift { node, item, value } => self.accept_drift(*node, item, value),
            CommandV1::ChangeVoters { voters } => Ok(Applied::Voters(voters.clone())),
            CommandV1::CertifyCellKey { key, chain_pem } => self.certify_cell_key(key, chain_pem),
            CommandV1::SetTrustRoots { roots } => self.set_trust_roots(roots),
            CommandV1::SetAuditLimits(limits) => self.set_audit_limits(limits),
            CommandV1::AuditCosign { size, cosignature } => self.audit_cosign(*size, cosignature),
            CommandV1::RedeemJoinToken {
                id,
                secret_sha256,
                node,
                now_ms,
            } => self.redeem_join_token(id, secret_sha256, *node, *now_ms),
        };
        if outcome.is_ok() {
            self.cluster_epoch += 1;
            if let Some(change) = changed_by(c) {
                self.journal.note(change);
            }
            self.journal.commit(self.cluster_epoch);
        } else {
            self.journal.discard();
        }
        outcome
    }

    fn register_node(&mut self, r: &NodeRegistration) -> Outcome {
        validate_registration(r)?;
        let record = match self.nodes.get(&r.id) {
            Some(old) => NodeRecord {
                registration: r.clone(),
                ..old.clone()
            },
            None => NodeRecord {
                registration: r.clone(),
                health: Health::Up,
                participation: Participation::In,
                draining: false,
                last_heartbeat_ms: 0,
            },
        };
        let old = self.nodes.insert(r.id, record.clone());
        let moved = match self.evolve_topology() {
            Ok(evolved) => self.follow_topology(evolved),
            Err(e) => Err(e),
        };
        if let Err(e) = moved {
            // Refused: leave the state as it was.
            match old {
                Some(old) => self.nodes.insert(r.id, old),
                None => self.nodes.remove(&r.id),
            };
            return Err(e);
        }
        Ok(Applied::Node(record))
    }

    /// Marks `node` in or out of placement and re-places the PGs that change.
    fn set_participation(&mut self, node: NodeId, participation: Participation) -> Outcome {
        self.replace_node(node, |r| r.participation = participation)
    }

    /// Starts or ends the drain of `node`: a draining node takes no new replicas and its PGs
    /// move away, each staying on it until its successor is current.
    fn set_draining(&mut self, node: NodeId, draining: bool) -> Outcome {
        self.replace_node(node, |r| r.draining = draining)
    }

    /// Changes `node`'s record with `change` and re-places the PGs that change; as on any
    /// topology change, a pool whose rule the new topology cannot meet keeps its map, and a
    /// refused remap leaves the record as it was.
    fn replace_node(&mut self, node: NodeId, change: impl FnOnce(&mut NodeRecord)) -> Outcome {
        let record = self
            .nodes
            .get_mut(&node)
            .ok_or_else(|| CommandError::NotFound(format!("node {node}")))?;
        let old = record.clone();
        change(record);
        if *record == old {
            return Ok(Applied::Node(old));
        }
        let record = record.clone();
        let moved = match self.evolve_topology() {
            Ok(evolved) => self.follow_topology(evolved),
            Err(e) => Err(e),
        };
        if let Err(e) = moved {
            self.nodes.insert(node, old);
            return Err(e);
        }
        Ok(Applied::Node(record))
    }

    fn set_health(&mut self, node: NodeId, health: Health) -> Outcome {
        let record = self
            .nodes
            .get_mut(&node)
            .ok_or_else(|| CommandError::NotFound(format!("node {node}")))?;
        // Placement keeps a down node's PGs where they are: no map changes, so marking a
        // hundred nodes down costs a hundred record updates, not a hundred remaps.
        record.health = health;
        Ok(Applied::Node(record.clone()))
    }

    fn heartbeat(&mut self, node: NodeId, at_ms: u64) -> Outcome {
        let record = self
            .nodes
            .get_mut(&node)
            .ok_or_else(|| CommandError::NotFound(format!("node {node}")))?;
        record.last_heartbeat_ms = record.last_heartbeat_ms.max(at_ms);
        record.health = Health::Up;
        Ok(Applied::Node(record.clone()))
    }

    /// The topology the nodes now describe. While no pool exists nothing depends on the map's
    /// layout, so none is kept (which also makes registering thousands of nodes cheap) and the
    /// first pool lays one out afresh: the capacity line's block size is fixed when a map is
    /// born and the line grows at most `BLOCKS_MAX / BLOCKS_AT_GENESIS` (256) fold after that,
    /// so a map born with the first node of a cluster that registers thousands before its
    /// first pool could not take them in.
    pub(super) fn evolve_topology(&self) -> Result<Option<Topology>, CommandError> {
        if self.pools.is_empty() {
            // Born with the first pool (`create_pool`), from every node registered by then.
            return Ok(Some(Topology::default()));
        }
        self.topology.evolve(&self.nodes, &self.labels)
    }

    /// Moves to `evolved` (if the topology changed) and remaps the pools, or refuses and
    /// changes nothing if a new PG map would leave some volume's PG without a current replica.
    pub(super) fn follow_topology(
        &mut self,
        evolved: Option<Topology>,
    ) -> Result<(), CommandError> {
        let Some(topology) = evolved else {
            return Ok(());
        };
        let maps = self.pool_maps(&topology)?;
        self.topology = topology;
        self.remap_pools(maps);
        Ok(())
    }

    /// The next map of every pool `topology` can satisfy (a pool it cannot keeps its last
    /// map), with replicas that leave their PGs handed over (see [`handover`]). Refused if a
    /// PG of a volume would hold none of the volume's current replicas: the replicas that
    /// arrive hold none of its data yet, so such a move would leave the PG with no copy to
    /// serve or rebuild from. The change can go through once the PG's stale replicas are
    /// restored (and never, in a pool of one replica, for a PG that would move).
    pub(super) fn pool_maps(
        &self,
        topology: &Topology,
    ) -> Result<Vec<Option<Remapped>>, CommandError> {
        let mut maps = Vec::with_capacity(self.pools.len());
        for pool in self.pools.values() {
            let spec = &pool.spec;
            let Ok(target) = topology.pg_map(
                pool.id,
                &spec.name,
                &spec.rule,
                spec.pg_count,
                &pool.overrides,
            ) else {
                maps.push(None);
                continue;
            };
            let volumes = self.volumes_of(&spec.name);
            let remapped = handover::remap(&pool.map, target, &volumes, |n| self.can_serve(n));
            for v in &volumes {
                for (pg, (before, after)) in pool.map.pgs.iter().zip(&remapped.map.pgs).enumerate()
                {
                    let current = v.acting(pg as u32, before);
                    // A PG that stays put is left alone, whatever it holds.
                    if before != after && !after.iter().any(|n| current.contains(n)) {
                        return Err(CommandError::FailedPrecondition(format!(
                            "volume {}: PG {pg} of pool {} would move from {before:?} to {after:?}, \
                             leaving none of its current replicas {current:?}",
                            v.spec.name, spec.name
                        )));
                    }
                }
            }
            maps.push(Some(remapped));
        }
        Ok(maps)
    }

    /// The volumes of pool `pool`, in name order.
    pub(super) fn volumes_of(&self, pool: &str) -> Vec<&Volume> {
        self.volumes
            .values()
            .filter(|v| v.spec.pool == pool)
            .collect()
    }

    /// Whether `node` can keep a replica that leaves its PG: it is in placement and up.
    fn can_serve(&self, node: NodeId) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|r| r.participation == Participation::In && r.health == Health::Up)
    }

    /// Puts in place the pools' new maps (in pool order, as [`Self::pool_maps`] gives them);
    /// a pool whose map changes gets a new epoch.
    pub(super) fn remap_pools(&mut self, maps: Vec<Option<Remapped>>) {
        assert_eq!(maps.len(), self.pools.len());
        for (pool, remapped) in self.pools.values_mut().zip(maps) {
            let Some(Remapped { map, stale }) = remapped else {
                continue;
            };
            let spec = &pool.spec;
            let moved = map.disks != pool.map.disks;
            let pgs: BTreeSet<u32> = (0..map.disks.len().max(pool.map.disks.len()))
                .filter(|&pg| map.disks.get(pg) != pool.map.disks.get(pg))
                .map(|pg| pg as u32)
                .collect();
            if !pgs.is_empty() || map.map_epoch != pool.map.map_epoch {
                self.journal.note(Change::Pool {
                    name: spec.name.clone(),
                    pgs: Some(pgs),
                });
            }
            let volumes = self
                .volumes
                .values_mut()
                .filter(|v| v.spec.pool == spec.name);
            for (v, sets) in volumes.zip(stale) {
                v.stale = sets;
                let stale = &v.stale;
                v.rebuilding
                    .retain(|r| stale.get(&r.pg).is_some_and(|s| s.contains(&r.node)));
                if moved {
                    self.journal.note(Change::Volume(v.spec.name.clone()));
                }
            }
            pool.map = PgMap {
                epoch: pool.map.epoch + u64::from(moved),
                ..map
            };
        }
    }

    /// Lets the leaving replicas of `pool` go from every PG whose targets are now current for
    /// every volume; one new epoch for the pool if any went.
    fn settle(&mut self, pool: &str) {
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        if p.map.leaving.is_empty() {
            return;
        }
        let pgs = handover::settled(&p.map, &self.volumes_of(pool));
        if pgs.is_empty() {
            return;
        }
        let p = self.pools.get_mut(pool).expect("pool looked up above");
        for &pg in &pgs {
            let gone = handover::drop_leaving(&mut p.map, pg);
            for v in self.volumes.values_mut().filter(|v| v.spec.pool == pool) {
                // A leaving replica is mostly current: only a volume it was stale for changes.
                if v.forget(pg, &gone) {
                    self.journal.note(Change::Volume(v.spec.name.clone()));
                }
            }
        }
        p.map.epoch += 1;
        self.journal.note(Change::Pool {
            name: pool.to_owned(),
            pgs: Some(pgs.into_iter().collect()),
        });
    }

    fn create_pool(&mut self, spec: &PoolSpec) -> Outcome {
        validate_name("pool", &spec.name)?;
        let rule = &spec.rule;
        if rule.replicas == 0 || rule.replicas > REPLICAS_MAX {
            return Err(CommandError::InvalidArgument(format!(
                "replicas must be 1..={REPLICAS_MAX}, not {}",
                rule.replicas
            )));
        }
        if rule.min_replicas == 0 || rule.min_replicas > rule.replicas {
            return Err(CommandError::InvalidArgument(format!(
                "min_replicas must be 1..={} (replicas), not {}",
                rule.replicas, rule.min_replicas
            )));
        }
        if rule.failure_domain.is_empty() {
            return Err(CommandError::InvalidArgument(
                "failure domain level is empty".into(),
            ));
        }
        if spec.pg_count == 0 || spec.pg_count > PG_COUNT_MAX {
            return Err(CommandError::InvalidArgument(format!(
                "pg_count must be 1..={PG_COUNT_MAX}, not {}",
                spec.pg_count
            )));
        }
        if self.pools.contains_key(&spec.name) {
            return Err(CommandError::AlreadyExists(format!("pool {}", spec.name)));
        }
        let id = self.next_pool_id;
        let born = match self.pools.is_empty() {
            true => Topology::default().evolve(&self.nodes, &self.labels)?,
            false => None,
        };
        let topology = born.as_ref().unwrap_or(&self.topology);
        let overrides = placement::Overrides::new(id);
        let map = topology.pg_map(id, &spec.name, rule, spec.pg_count, &overrides)?;
        if let Some(born) = born {
            self.topology = born;
        }
        let pool = Pool {
            id,
            spec: spec.clone(),
            map: PgMap { epoch: 1, ..map },
            overrides,
        };
        self.next_pool_id += 1;
        self.pools.insert(spec.name.clone(), pool.clone());
        Ok(Applied::Pool(pool))
    }

    fn create_volume(&mut self, spec: &VolumeSpec) -> Outcome {
        validate_name("volume", &spec.name)?;
        validate_size(spec.size_bytes)?;
        let e = spec.extent_size_bytes;
        if e == 0
            || !e.is_power_of_two()
            || !e.is_multiple_of(VOLUME_BLOCK_BYTES)
            || e > EXTENT_SIZE_MAX_BYTES
        {
            return Err(CommandError::InvalidArgument(format!(
                "extent size must be a power of two between {VOLUME_BLOCK_BYTES} and {EXTENT_SIZE_MAX_BYTES} bytes, not {e}"
            )));
        }
        if let Some(existing) = self.volumes.get(&spec.name) {
            // A retried create (same request id) succeeds once and returns what it created.
            if !spec.request_id.is_empty() && existing.spec.request_id == spec.request_id {
                return Ok(Applied::Volume(existing.clone()));
            }
            return Err(CommandError::AlreadyExists(format!("volume {}", spec.name)));
        }
        if !self.pools.contains_key(&spec.pool) {
            return Err(CommandError::NotFound(format!("pool {}", spec.pool)));
        }
        self.next_volume_id += 1;
        let volume = Volume {
            id: self.next_volume_id,
            spec: spec.clone(),
            attach_epoch: 0,
            attachment: None,
            stale: BTreeMap::new(),
            rebuilding: Vec::new(),
            qos: Default::default(),
            scrub: Default::default(),
        };
        self.volumes.insert(spec.name.clone(), volume.clone());
        Ok(Applied::Volume(volume))
    }

    fn resize_volume(&mut self, name: &str, size_bytes: u64) -> Outcome {
        validate_size(size_bytes)?;
        let volume = self
            .volumes
            .get_mut(name)
            .ok_or_else(|| CommandError::NotFound(format!("volume {name}")))?;
        if size_bytes < volume.spec.size_bytes {
            return Err(CommandError::FailedPrecondition(format!(
                "volume {name}: shrinking from {} to {size_bytes} bytes would drop data",
                volume.spec.size_bytes
            )));
        }
        volume.spec.size_bytes = size_bytes;
        Ok(Applied::Volume(volume.clone()))
    }

    fn delete_pool(&mut self, name: &str) -> Outcome {
        if !self.pools.contains_key(name) {
            return Err(CommandError::NotFound(format!("pool {name}")));
        }
        let held: Vec<&str> = self
            .volumes
            .values()
            .filter(|v| v.spec.pool == name)
            .map(|v| v.spec.name.as_str())
            .collect();
        if !held.is_empty() {
            return Err(CommandError::FailedPrecondition(format!(
                "pool {name} holds {} volumes ({}); delete them first",
                held.len(),
                held.join(", ")
            )));
        }
        self.pools.remove(name);
        Ok(Applied::Deleted)
    }

    fn delete_volume(&mut self, name: &str) -> Outcome {
        let volume = self
            .volumes
            .get(name)
            .ok_or_else(|| CommandError::NotFound(format!("volume {name}")))?;
        if let Some(a) = &volume.attachment {
            return Err(CommandError::FailedPrecondition(format!(
                "volume {name} is attached to {}",
                a.client
            )));
        }
        let pool = volume.spec.pool.clone();
        self.volumes.remove(name);
        // The deleted volume may have been the last one waiting for a replica to arrive.
        self.settle(&pool);
        Ok(Applied::Deleted)
    }

    /// Admits a membership change of `volume` made under `attach_epoch` only if that is the
    /// volume's latest attach epoch. An older one was fenced by a newer attach (whose writes
    /// its proposer may have missed); a newer one, or 0, was never granted. A detached volume
    /// keeps its latest epoch: its last holder may still finish (a resync, a detach retry)
    /// until someone attaches again.
    pub(in crate::meta) fn check_attach_epoch(
        &self,
        volume: &str,
        attach_epoch: u64,
    ) -> Result<(), CommandError> {
        let current = self
            .volumes
            .get(volume)
            .ok_or_else(|| CommandError::NotFound(format!("volume {volume}")))?
            .attach_epoch;
        if attach_epoch == 0 || attach_epoch > current {
            return Err(CommandError::InvalidArgument(format!(
                "volume {volume}: attach epoch {attach_epoch} was never granted (the latest is {current})"
            )));
        }
        if attach_epoch < current {
            return Err(CommandError::FailedPrecondition(format!(
                "volume {volume}: attach epoch {attach_epoch} {FENCED_WORDS} {current}"
            )));
        }
        Ok(())
    }

    /// Takes `node`'s replica of `volume` in `pg` out of the acting set. Idempotent; refused
    /// if `node` holds no replica of the PG or is the volume's last live one there (the PG
    /// would have no current copy left to serve).
    fn remove_replica(&mut self, volume: &str, pg: u32, node: NodeId) -> Outcome {
        let (v, replicas) = self.volume_replica(volume, pg, node)?;
        if v.stale.get(&pg).is_some_and(|s| s.contains(&node)) {
            return Ok(Applied::Volume(v.clone()));
        }
        if v.acting(pg, &replicas).len() <= 1 {
            return Err(CommandError::FailedPrecondition(format!(
                "node {node} holds the last current replica of volume {volume} in PG {pg}"
            )));
        }
        v.stale.entry(pg).or_default().insert(node);
        Ok(Applied::Volume(v.clone()))
    }

    /// Records how far the rebuild of a stale replica has come; refused for a replica that is
    /// not stale (it has nothing to rebuild) or a report that claims more than its total.
    fn report_rebuild(&mut self, volume: &str, progress: &RebuildProgress) -> Outcome {
        let (pg, node) = (progress.pg, progress.node);
        let (v, _) = self.volume_replica(volume, pg, node)?;
        if !v.stale.get(&pg).is_some_and(|s| s.contains(&node)) {
            return Err(CommandError::FailedPrecondition(format!(
                "node {node} holds no stale replica of volume {volume} in PG {pg}"
            )));
        }
        if progress.done_bytes > progress.total_bytes {
            return Err(CommandError::InvalidArgument(format!(
                "{} bytes done of {}",
                progress.done_bytes, progress.total_bytes
            )));
        }
        v.rebuilding.retain(|r| (r.pg, r.node) != (pg, node));
        v.rebuilding.push(progress.clone());
        Ok(Applied::Volume(v.clone()))
    }

    /// Puts `node`'s replica of `volume` in `pg` back into the acting set. Idempotent. The
    /// last arrival of a PG to become current lets the PG's leaving replicas go.
    fn restore_replica(&mut self, volume: &str, pg: u32, node: NodeId) -> Outcome {
        let (v, _) = self.volume_replica(volume, pg, node)?;
        v.rebuilding.retain(|r| (r.pg, r.node) != (pg, node));
        if let Some(stale) = v.stale.get_mut(&pg)
            && stale.remove(&node)
            && stale.is_empty()
        {
            v.stale.remove(&pg);
        }
        let pool = v.spec.pool.clone();
        self.settle(&pool);
        let v = self.volumes.get(volume).expect("volume looked up above");
        Ok(Applied::Volume(v.clone()))
    }

    /// Volume `volume` and the replicas of its pool's PG `pg`, checked to include `node`.
    fn volume_replica(
        &mut self,
        volume: &str,
        pg: u32,
        node: NodeId,
    ) -> Result<(&mut Volume, Vec<NodeId>), CommandError> {
        let v = self
            .volumes
            .get_mut(volume)
            .ok_or_else(|| CommandError::NotFound(format!("volume {volume}")))?;
        let pool = &v.spec.pool;
        let replicas = self
            .pools
            .get(pool)
            .ok_or_else(|| CommandError::NotFound(format!("pool {pool}")))?
            .map
            .pgs
            .get(pg as usize)
            .ok_or_else(|| CommandError::InvalidArgument(format!("pool {pool} has no PG {pg}")))?
            .clone();
        if !replicas.contains(&node) {
            return Err(CommandError::FailedPrecondition(format!(
                "node {node} holds no replica of PG {pg} of pool {pool}"
            )));
        }
        Ok((v, replicas))
    }

    fn attach_volume(&mut self, name: &str, client: &str, force: bool) -> Outcome {
        if client.is_empty() {
            return Err(CommandError::InvalidArgument(
                "attach needs a client name".into(),
            ));
        }
        let volume = self
            .volumes
            .get_mut(name)
            .ok_or_else(|| CommandError::NotFound(format!("volume {name}")))?;
        // The rebuild agent holds idle volumes only to heal them: anyone else may take them
        // without force (which fences the agent), but one agent never takes from another.
        let yields = volume
            .attachment
            .as_ref()
            .is_some_and(|a| is_rebuild_agent(&a.client))
            && !is_rebuild_agent(client);
        if let Some(a) = &volume.attachment
            && a.client != client
            && !force
            && !yields
        {
            return Err(CommandError::FailedPrecondition(format!(
                "volume {name} is attached to {} (force to take it over)",
                a.client
            )));
        }
        volume.attach_epoch += 1;
        let attachment = Attachment {
            client: client.to_string(),
            epoch: volume.attach_epoch,
        };
        volume.attachment = Some(attachment.clone());
        Ok(Applied::Attached {
            volume: name.to_string(),
            attachment,
        })
    }

    /// Detaching a volume that is not attached is done already; one attached to another
    /// client is refused (it would let a third attach without fencing the holder).
    fn detach_volume(&mut self, name: &str, client: &str) -> Outcome {
        let volume = self
            .volumes
            .get_mut(name)
            .ok_or_else(|| CommandError::NotFound(format!("volume {name}")))?;
        match &volume.attachment {
            Some(a) if a.client != client => Err(CommandError::FailedPrecondition(format!(
                "volume {name} is attached to {}, not {client}",
                a.client
            ))),
            _ => {
                volume.attachment = None;
                Ok(Applied::Volume(volume.clone()))
            }
        }
    }
}

/// Attachments whose client name starts with this are the rebuild agent's (see
/// `crate::rebuild_agent`).
pub const REBUILD_AGENT_PREFIX: &str = "rebuild-agent@";

pub fn is_rebuild_agent(client: &str) -> bool {
    client.starts_with(REBUILD_AGENT_PREFIX)
}

fn validate_name(kind: &str, name: &str) -> Result<(), CommandError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CommandError::InvalidArgument(format!(
            "invalid {kind} name {name:?}: use 1..={NAME_LEN_MAX} of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

fn validate_size(size_bytes: u64) -> Result<(), CommandError> {
    if size_bytes == 0
        || !size_bytes.is_multiple_of(VOLUME_BLOCK_BYTES)
        || size_bytes > VOLUME_SIZE_MAX_BYTES
    {
        return Err(CommandError::InvalidArgument(format!(
            "size must be a non-zero multiple of {VOLUME_BLOCK_BYTES} bytes up to {VOLUME_SIZE_MAX_BYTES}, not {size_bytes}"
        )));
    }
    Ok(())
}

/// The record a command names (beyond what a remap it causes changes, which the remap notes).
fn changed_by(c: &CommandV1) -> Option<Change> {
    let volume = |name: &String| Some(Change::Volume(name.clone()));
    match c {
        CommandV1::RegisterNode(r) => Some(Change::Node(r.id)),
        CommandV1::Heartbeat { node, .. }
        | CommandV1::SetHealth { node, .. }
        | CommandV1::SetDraining { node, .. }
        | CommandV1::SetParticipation { node, .. } => Some(Change::Node(*node)),
        // The moved PGs are noted by the remap; a plan without moves changes the pool's
        // record in nothing but its epoch.
        CommandV1::Rebalance { pool, .. } => Some(Change::Pool {
            name: pool.clone(),
            pgs: Some(Default::default()),
        }),
        CommandV1::CreatePool(spec) => Some(Change::Pool {
            name: spec.name.clone(),
            pgs: None,
        }),
        CommandV1::DeletePool { name } => Some(Change::Pool {
            name: name.clone(),
            pgs: None,
        }),
        CommandV1::CreateVolume(spec) => volume(&spec.name),
        CommandV1::ResizeVolume { name, .. }
        | CommandV1::SetVolumeQos { name, .. }
        | CommandV1::RequestScrub { name, .. }
        | CommandV1::DeleteVolume { name }
        | CommandV1::AttachVolume { name, .. }
        | CommandV1::DetachVolume { name, .. }
        | CommandV1::DetachVolumeV2 { name, .. } => volume(name),
        CommandV1::RemoveReplica { volume: v, .. }
        | CommandV1::RestoreReplica { volume: v, .. }
        | CommandV1::ReportRebuild { volume: v, .. }
        | CommandV1::RemoveReplicaV2 { volume: v, .. }
        | CommandV1::RestoreReplicaV2 { volume: v, .. }
        | CommandV1::ReportRebuildV2 { volume: v, .. }
        | CommandV1::ReportScrub { volume: v, .. } => volume(v),
        CommandV1::Once { .. } => None,
        // Watch streams carry no policy; sessions read its epoch from the state.
        CommandV1::InitPolicy { .. }
        | CommandV1::ChangePolicy { .. }
        | CommandV1::AddCellKey(_)
        | CommandV1::RevokeCertificate(_)
        | CommandV1::AddJoinToken(_)
        | CommandV1::RedeemJoinToken { .. }
        | CommandV1::AuditCheckpoint { .. }
        | CommandV1::Noted
        | CommandV1::RequestApproval { .. }
        | CommandV1::Approve { .. }
        | CommandV1::DenyRequest { .. }
        | CommandV1::SetGuard { .. }
        | CommandV1::SetApprovalTtl { .. }
        | CommandV1::SetLabels { .. }
        | CommandV1::SetDriftBaseline { .. }
        | CommandV1::ExceptDrift(_)
        | CommandV1::AcceptDrift { .. }
        | CommandV1::ChangeVoters { .. }
        | CommandV1::CertifyCellKey { .. }
        | CommandV1::SetTrustRoots { .. }
        | CommandV1::SetAuditLimits(_)
        | CommandV1::AuditCosign { .. }
        | CommandV1::AuditDenied { .. } => None,
        // Jobs are read by their own calls, not followed over `Watch`.
        CommandV1::Infer(_) => None,
        CommandV1::Audited { command, .. } => changed_by(command),
    }
}
