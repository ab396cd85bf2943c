//! The one versioned command enum: every change of the cluster state is exactly one [`Command`],
//! proposed through Raft and applied by [`crate::meta::state::ClusterState::apply`].
//!
//! Commands are stored in the replicated log, so their encoding is forever: a new version of a
//! command is a new variant (or a new `V2` enum), never a changed one. Everything `apply` needs
//! travels inside the command (a heartbeat carries its own timestamp), which keeps apply
//! deterministic on every member.
//!
//! Membership changes of a volume (`RemoveReplicaV2`, `RestoreReplicaV2`, `ReportRebuildV2`,
//! `DetachVolumeV2`) carry the attach epoch their proposer acts under, and are refused once a
//! newer attach fenced it: a writer that lost the volume must not change which replicas count
//! as current. Their first versions, without the epoch, stay for the entries already in the
//! log and apply as they always did; nothing proposes them any more.

use super::auth::PolicyChange;
use serde::{Deserialize, Serialize};

use super::model::{
    Attachment, DiskMove, Health, NodeId, NodeRecord, NodeRegistration, Participation, Pool,
    PoolSpec, RebuildProgress, Volume, VolumeSpec,
};

/// A change of the cluster state, tagged with the version of its encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    V1(CommandV1),
}

/// Version 1 of the commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandV1 {
    /// A node announces (or re-announces) its addresses, location and disks.
    RegisterNode(NodeRegistration),
    /// A node is alive at `at_ms` (wall clock of the proposer). Replayed from old logs only:
    /// liveness is the leader's soft state now, and only its transitions (`SetHealth`) are
    /// written.
    Heartbeat {
        node: NodeId,
        at_ms: u64,
    },
    CreatePool(PoolSpec),
    CreateVolume(VolumeSpec),
    ResizeVolume {
        name: String,
        size_bytes: u64,
    },
    DeleteVolume {
        name: String,
    },
    /// Grants a new fencing epoch to `client`; `force` takes the volume from another holder.
    AttachVolume {
        name: String,
        client: String,
        force: bool,
    },
    /// `client` lets go of `name`: it is no longer attached (nothing if it was not). Unfenced:
    /// replayed from old logs only, superseded by `DetachVolumeV2`.
    DetachVolume {
        name: String,
        client: String,
    },
    /// `node`'s replica of `volume` in PG `pg` missed a write: it leaves the acting set.
    /// Unfenced: replayed from old logs only, superseded by `RemoveReplicaV2`.
    RemoveReplica {
        volume: String,
        pg: u32,
        node: NodeId,
    },
    /// `node`'s replica of `volume` in PG `pg` has caught up: it rejoins the acting set.
    /// Unfenced: replayed from old logs only, superseded by `RestoreReplicaV2`.
    RestoreReplica {
        volume: String,
        pg: u32,
        node: NodeId,
    },
    /// The writer of `volume` reports how far the rebuild of `node`'s stale replica in PG `pg`
    /// has come; cleared when the replica is restored. Unfenced: replayed from old logs only,
    /// superseded by `ReportRebuildV2`.
    ReportRebuild {
        volume: String,
        progress: RebuildProgress,
    },
    /// Takes `node` out of placement (its PGs move elsewhere and are rebuilt there) or puts it
    /// back in.
    SetParticipation {
        node: NodeId,
        participation: Participation,
    },
    /// `command`, applied at most once for `request_id`: a retry of the same request (a client
    /// that lost the answer to a leader change, say) gets the first outcome back instead of
    /// applying it again — which for an attach would grant a second epoch and fence the caller
    /// by its own retry.
    Once {
        request_id: String,
        command: Box<CommandV1>,
    },
    /// `RemoveReplica` by the writer holding attach epoch `attach_epoch`.
    RemoveReplicaV2 {
        volume: String,
        pg: u32,
        node: NodeId,
        attach_epoch: u64,
    },
    /// `RestoreReplica` by the writer holding attach epoch `attach_epoch`: a writer fenced by a
    /// newer attach may have resynced the replica without the new writer's writes.
    RestoreReplicaV2 {
        volume: String,
        pg: u32,
        node: NodeId,
        attach_epoch: u64,
    },
    /// `ReportRebuild` by the writer holding attach epoch `attach_epoch`.
    ReportRebuildV2 {
        volume: String,
        progress: RebuildProgress,
        attach_epoch: u64,
    },
    /// `DetachVolume` by the attachment of epoch `attach_epoch`: an older attachment of the
    /// same client name (a process restarted under the same name) cannot let go of the newer.
    DetachVolumeV2 {
        name: String,
        client: String,
        attach_epoch: u64,
    },
    /// Removes pool `name`; refused while it holds volumes.
    DeletePool {
        name: String,
    },
    /// The leader's failure detector found `node` down (its heartbeats stopped and the loss
    /// was confirmed) or up again. Down fences nothing by itself and moves no PG; out does.
    SetHealth {
        node: NodeId,
        health: Health,
    },
    /// Starts (or ends) the drain of `node`: it takes no new replicas and its PGs move away,
    /// each staying on it until the replica that replaces it is current.
    SetDraining {
        node: NodeId,
        draining: bool,
    },
    /// Moves replicas of pool `pool` from disk to disk as the balancer planned them at the
    /// pool's map epoch `pool_epoch` (refused once the map moved on), by adding overrides.
    Rebalance {
        pool: String,
        pool_epoch: u64,
        moves: Vec<DiskMove>,
    },
    /// The access policy of a new cluster: `admin` is cluster-admin. Applies only to a
    /// cluster whose policy was never initialized.
    InitPolicy {
        admin: String,
        /// The two-person rule's guards all start off (a one-person sandbox, `fabricd dev`).
        #[serde(default)]
        guards_off: bool,
        /// Principals that start with the approver role (a guarded grant could not make the
        /// first one).
        #[serde(default)]
        approvers: Vec<String>,
    },
    /// `by` (a principal) changes the access policy.
    ChangePolicy {
        by: String,
        change: PolicyChange,
    },
    /// A new cell key, which signs attach capabilities from then on.
    AddCellKey(super::cell_key::CellKey),
    /// The certificate with this serial is refused from now on.
    RevokeCertificate(super::state_revoked::Revoked),
    /// A one-time join token (its secret's digest) a new node may redeem until it expires.
    AddJoinToken(super::state_join::JoinTokenRecord),
    /// A call and the command it makes: the command applies and the call's audit entry is
    /// appended in one step, or (the log being full) neither.
    Audited {
        call: crate::audit::entry::AuditCall,
        command: Box<CommandV1>,
    },
    /// A call the access policy refused: only its audit entry.
    AuditDenied {
        call: crate::audit::entry::AuditCall,
        reason: String,
    },
    /// A guarded call, held until a second principal approves it (see `state_approval`).
    RequestApproval {
        guard: String,
        command: Box<CommandV1>,
    },
    /// `by` approves request `id`, whose operation it saw as `op_sha256`: the operation runs.
    Approve {
        id: String,
        op_sha256: crate::audit::merkle::Hash,
        by: crate::audit::entry::AuditCall,
    },
    /// `by` denies request `id`.
    DenyRequest {
        id: String,
        reason: String,
        by: crate::audit::entry::AuditCall,
    },
    /// Turns a guard of the two-person rule on or off.
    SetGuard {
        guard: String,
        on: bool,
    },
    /// Labels location `location` (`level=value`) with `labels` (none: removes them).
    SetLabels {
        location: String,
        labels: std::collections::BTreeMap<String, String>,
    },
    /// Node `node`'s desired state for drift detection, if it has none yet.
    SetDriftBaseline {
        node: super::model::NodeId,
        items: std::collections::BTreeMap<String, String>,
    },
    /// An item of a node may differ from its desired state until a time.
    ExceptDrift(super::drift::DriftException),
    /// `value` becomes the desired value of item `item` of node `node`.
    AcceptDrift {
        node: super::model::NodeId,
        item: String,
        value: String,
    },
    /// How long a request of the two-person rule waits for its approval.
    SetApprovalTtl {
        ttl_ms: u64,
    },
    /// Changes the Raft voters to `voters`: nothing in the state; the member that wrote it
    /// makes the change once it committed (so that a guarded change waits for its approval).
    ChangeVoters {
        voters: std::collections::BTreeSet<u64>,
    },
    /// The CA's certificate chain (PEM) of cell key `key` (hex).
    CertifyCellKey {
        key: String,
        chain_pem: String,
    },
    /// Changes nothing: carries the audit entry of a call whose effect lies outside the state
    /// (a Raft membership change, a capability signed), written before that effect.
    Noted,
    /// Signs a checkpoint of the audit log's current size (the leader asks every few seconds).
    AuditCheckpoint {
        time_ms: u64,
    },
    /// How many audit entries are kept, and at most held.
    SetAuditLimits(crate::audit::log::AuditLimits),
    /// A witness's signature over the audit checkpoint of `size`.
    AuditCosign {
        size: u64,
        cosignature: crate::audit::checkpoint::Cosignature,
    },
    /// Node `node` redeems join token `id`, at `now_ms` by the proposing member's clock.
    RedeemJoinToken {
        id: String,
        secret_sha256: String,
        node: super::model::NodeId,
        now_ms: u64,
    },
    /// The trust bundle becomes these root CA certificates (PEM, oldest first).
    SetTrustRoots {
        roots: Vec<String>,
    },
    /// Changes the QoS fields of volume `name` that `change` sets.
    SetVolumeQos {
        name: String,
        change: super::model::QosChange,
    },
    /// Asks for a scrub of every PG of volume `name` (deep, or light), at `at_ms` by the
    /// proposing member's clock; one already asked for is kept, made deep if this one is.
    RequestScrub {
        name: String,
        deep: bool,
        at_ms: u64,
    },
    /// The writer holding attach epoch `attach_epoch` scrubbed PGs of volume `volume` in a
    /// scrub that started at `started_ms` (deep or light); `fulfils` is the `at_ms` of the
    /// request it finishes, if it finishes one (its last report covers every PG).
    ReportScrub {
        volume: String,
        attach_epoch: u64,
        deep: bool,
        started_ms: u64,
        pgs: Vec<super::model::PgScrubReport>,
        fulfils: Option<u64>,
    },
    /// A change of inference models or jobs (see `meta::infer`).
    Infer(super::infer::command::InferCommand),
}

impl From<CommandV1> for Command {
    fn from(c: CommandV1) -> Self {
        Command::V1(c)
    }
}

/// What a successfully applied command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Membership changes and blank entries carry no result.
    Nothing,
    Node(NodeRecord),
    Pool(Pool),
    Volume(Volume),
    Deleted,
    Attached {
        volume: String,
        attachment: Attachment,
    },
    /// A guarded call now waits for its approval.
    Requested(Box<super::state_approval::ApprovalRequest>),
    /// The voters to change the Raft group to.
    Voters(std::collections::BTreeSet<u64>),
    /// The policy's epoch after a policy command, and whether it changed anything.
    Policy {
        epoch: u64,
        changed: bool,
    },
    InferModel(Box<super::infer::model::InferModel>),
    InferJob(Box<super::infer::model::Job>),
}

/// Why a command changed nothing. Deterministic: every member refuses the same command alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The audit log is full: the call was refused and nothing changed.
    #[error("{0}")]
    AuditFull(String),
    #[error("{0}")]
    PermissionDenied(String),
}

/// Words in every refusal of a membership change whose attach epoch was fenced by a newer
/// attach (a `FailedPrecondition`), so that the proposer can tell it from other refusals.
pub const FENCED_WORDS: &str = "is fenced by epoch";

/// The epoch named after [`FENCED_WORDS`] in a fencing refusal's message.
pub fn fencing_epoch(message: &str) -> Option<u64> {
    let (_, after) = message.split_once(FENCED_WORDS)?;
    after.split_whitespace().next()?.parse().ok()
}

/// The state machine's answer to one log entry.
pub type Outcome = Result<Applied, CommandError>;

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Command::V1(c) = self;
        c.fmt(f)
    }
}

impl std::fmt::Display for CommandV1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandV1::RegisterNode(r) => write!(f, "register node {} at {}", r.id, r.rpc_addr),
            CommandV1::Heartbeat { node, at_ms } => {
                write!(f, "heartbeat of node {node} at {at_ms} ms")
            }
            CommandV1::CreatePool(p) => write!(f, "create pool {}", p.name),
            CommandV1::CreateVolume(v) => write!(
                f,
                "create volume {} ({} bytes) in {}",
                v.name, v.size_bytes, v.pool
            ),
            CommandV1::ResizeVolume { name, size_bytes } => {
                write!(f, "resize volume {name} to {size_bytes} bytes")
            }
            CommandV1::DeleteVolume { name } => write!(f, "delete volume {name}"),
            CommandV1::DeletePool { name } => write!(f, "delete pool {name}"),
            CommandV1::SetHealth { node, health } => write!(f, "mark node {node} {health:?}"),
            CommandV1::SetDraining { node, draining } => match draining {
                true => write!(f, "drain node {node}"),
                false => write!(f, "end the drain of node {node}"),
            },
            CommandV1::Rebalance {
                pool,
                pool_epoch,
                moves,
            } => write!(
                f,
                "move {} replicas of pool {pool} (planned at map epoch {pool_epoch})",
                moves.len()
            ),
            CommandV1::AttachVolume {
                name,
                client,
                force,
            } => {
                write!(
                    f,
                    "attach volume {name} to {client}{}",
                    if *force { " (force)" } else { "" }
                )
            }
            CommandV1::DetachVolume { name, client } => {
                write!(f, "detach volume {name} from {client}")
            }
            CommandV1::DetachVolumeV2 {
                name,
                client,
                attach_epoch,
            } => write!(
                f,
                "detach volume {name} from {client} (attach epoch {attach_epoch})"
            ),
            CommandV1::RemoveReplica { volume, pg, node } => {
                write!(
                    f,
                    "remove node {node} from the acting set of {volume} in PG {pg}"
                )
            }
            CommandV1::RemoveReplicaV2 {
                volume,
                pg,
                node,
                attach_epoch,
            } => write!(
                f,
                "remove node {node} from the acting set of {volume} in PG {pg} (attach epoch {attach_epoch})"
            ),
            CommandV1::RestoreReplica { volume, pg, node } => {
                write!(
                    f,
                    "restore node {node} to the acting set of {volume} in PG {pg}"
                )
            }
            CommandV1::RestoreReplicaV2 {
                volume,
                pg,
                node,
                attach_epoch,
            } => write!(
                f,
                "restore node {node} to the acting set of {volume} in PG {pg} (attach epoch {attach_epoch})"
            ),
            CommandV1::SetParticipation {
                node,
                participation,
            } => write!(f, "mark node {node} {participation:?}"),
            CommandV1::ReportRebuild { volume, progress } => write!(
                f,
                "rebuild of node {} in PG {} of {volume}: {} of {} bytes",
                progress.node, progress.pg, progress.done_bytes, progress.total_bytes
            ),
            CommandV1::ReportRebuildV2 {
                volume,
                progress,
                attach_epoch,
            } => write!(
                f,
                "rebuild of node {} in PG {} of {volume}: {} of {} bytes (attach epoch {attach_epoch})",
                progress.node, progress.pg, progress.done_bytes, progress.total_bytes
            ),
            CommandV1::Once {
                request_id,
                command,
            } => write!(f, "{command} (request {request_id})"),
            CommandV1::InitPolicy { admin, .. } => {
                write!(f, "start the access policy with {admin} as cluster-admin")
            }
            CommandV1::ChangePolicy { by, change } => write!(f, "{by}: {change}"),
            CommandV1::AddCellKey(_) => f.write_str("add a cell key"),
            CommandV1::RevokeCertificate(r) => {
                write!(f, "revoke certificate {} ({})", r.serial, r.principal)
            }
            CommandV1::AddJoinToken(t) => write!(
                f,
                "{}: make join token {} ({})",
                t.created_by,
                t.id,
                t.role.name()
            ),
            CommandV1::RedeemJoinToken { id, node, .. } => {
                write!(f, "node {node} joins with token {id}")
            }
            CommandV1::Audited { call, command } => write!(f, "{}: {command}", call.principal),
            CommandV1::AuditDenied { call, .. } => write!(
                f,
                "{} was refused {} on {}",
                call.principal, call.verb, call.target
            ),
            CommandV1::AuditCheckpoint { .. } => f.write_str("sign an audit checkpoint"),
            CommandV1::Noted => f.write_str("note a call"),
            CommandV1::RequestApproval { guard, command } => {
                write!(f, "ask a second person to approve ({guard}): {command}")
            }
            CommandV1::Approve { id, by, .. } => {
                write!(f, "{} approves request {id}", by.principal)
            }
            CommandV1::DenyRequest { id, by, .. } => {
                write!(f, "{} denies request {id}", by.principal)
            }
            CommandV1::SetGuard { guard, on } => {
                write!(f, "turn guard {guard} {}", if *on { "on" } else { "off" })
            }
            CommandV1::ChangeVoters { voters } => write!(f, "make the voters {voters:?}"),
            CommandV1::SetLabels { location, labels } => {
                write!(f, "label {location} with {labels:?}")
            }
            CommandV1::SetDriftBaseline { node, .. } => {
                write!(f, "record node {node}'s desired state")
            }
            CommandV1::ExceptDrift(e) => write!(
                f,
                "{}: let {} of node {} differ ({})",
                e.by, e.item, e.node, e.reason
            ),
            CommandV1::AcceptDrift { node, item, value } => {
                write!(f, "take {value:?} as node {node}'s desired {item}")
            }
            CommandV1::SetApprovalTtl { ttl_ms } => {
                write!(f, "approval requests wait {} s", ttl_ms / 1000)
            }
            CommandV1::CertifyCellKey { .. } => f.write_str("certify the cell key"),
            CommandV1::SetAuditLimits(l) => write!(
                f,
                "keep {} audit entries, hold at most {}",
                l.retain, l.capacity
            ),
            CommandV1::AuditCosign { size, cosignature } => write!(
                f,
                "witness {} cosigns the audit checkpoint of size {size}",
                cosignature.witness
            ),
            CommandV1::SetTrustRoots { roots } => {
                let pins: Vec<String> = roots
                    .iter()
                    .map(|pem| {
                        crate::identity::trust_bundle::parse_root(pem)
                            .map_or_else(|e| format!("(unreadable: {e})"), |r| r.pin)
                    })
                    .collect();
                write!(f, "trust the root CAs {}", pins.join(", "))
            }
            CommandV1::SetVolumeQos { name, change } => {
                write!(f, "set the QoS of volume {name}: {change}")
            }
            CommandV1::RequestScrub { name, deep, .. } => {
                let kind = if *deep { "a deep" } else { "a" };
                write!(f, "ask for {kind} scrub of volume {name}")
            }
            CommandV1::ReportScrub {
                volume, deep, pgs, ..
            } => {
                let kind = if *deep { "deep scrub" } else { "scrub" };
                let errors: u64 = pgs.iter().map(|p| p.errors).sum();
                let repaired: u64 = pgs.iter().map(|p| p.repaired).sum();
                write!(
                    f,
                    "{kind} of {} PGs of volume {volume}: {errors} errors, {repaired} repaired",
                    pgs.len()
                )
            }
            CommandV1::Infer(c) => c.fmt(f),
        }
    }
}
