//! The gRPC edge: wire types (`proto::meta`) in and out of domain types. `TryFrom` is where bad
//! input is refused with `INVALID_ARGUMENT`, before anything is proposed; rules that depend on
//! the cluster state (duplicates, unknown pools, unsatisfiable rules, fenced attach epochs)
//! are the state machine's.

use proto::meta as pb;
use tonic::Status;

use crate::meta::balance::Plan;
use crate::meta::command::{CommandError, CommandV1};
use crate::meta::member::MetaError;
use crate::meta::model::{
    Attachment, DiskInfo, EXTENT_SIZE_DEFAULT_BYTES, Health, Location, NodeRecord,
    NodeRegistration, Participation, Pool, PoolSpec, RebuildProgress, Rule, VOLUME_BLOCK_BYTES,
    Volume, VolumeSpec,
};

/// The gRPC status of a failed write or read.
pub fn status_of(e: MetaError) -> Status {
    match e {
        MetaError::Command(CommandError::AlreadyExists(m)) => {
            Status::already_exists(format!("{m} already exists"))
        }
        MetaError::Command(CommandError::NotFound(m)) => {
            Status::not_found(format!("{m} not found"))
        }
        MetaError::Command(CommandError::InvalidArgument(m)) => Status::invalid_argument(m),
        MetaError::Command(CommandError::FailedPrecondition(m)) => Status::failed_precondition(m),
        MetaError::Command(CommandError::AuditFull(m)) => Status::failed_precondition(m),
        MetaError::Command(CommandError::PermissionDenied(m)) => Status::permission_denied(m),
        MetaError::Unavailable(m) => Status::unavailable(m),
    }
}

fn check_size(what: &str, size_bytes: u64) -> Result<(), Status> {
    if size_bytes == 0 {
        return Err(Status::invalid_argument(format!("{what} must not be zero")));
    }
    if !size_bytes.is_multiple_of(VOLUME_BLOCK_BYTES) {
        return Err(Status::invalid_argument(format!(
            "{what} {size_bytes} is not a multiple of {VOLUME_BLOCK_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!("{what} name is empty")));
    }
    Ok(())
}

fn levels_in(levels: Vec<pb::LocationLevel>) -> Result<Vec<(String, String)>, Status> {
    levels
        .into_iter()
        .map(|l| {
            if l.level.is_empty() || l.name.is_empty() {
                Err(Status::invalid_argument(
                    "location levels need a level and a name",
                ))
            } else {
                Ok((l.level, l.name))
            }
        })
        .collect()
}

fn levels_out(levels: &[(String, String)]) -> Vec<pb::LocationLevel> {
    levels
        .iter()
        .map(|(level, name)| pb::LocationLevel {
            level: level.clone(),
            name: name.clone(),
        })
        .collect()
}

impl TryFrom<pb::CreateVolumeRequest> for VolumeSpec {
    type Error = Status;

    fn try_from(r: pb::CreateVolumeRequest) -> Result<Self, Status> {
        let pb::CreateVolumeRequest {
            name,
            pool,
            size_bytes,
            extent_size_bytes,
            request_id,
        } = r;
        check_name("volume", &name)?;
        check_name("pool", &pool)?;
        check_size("size", size_bytes)?;
        let extent_size_bytes = if extent_size_bytes == 0 {
            EXTENT_SIZE_DEFAULT_BYTES
        } else {
            check_size("extent size", extent_size_bytes)?;
            extent_size_bytes
        };
        Ok(VolumeSpec {
            name,
            pool,
            size_bytes,
            extent_size_bytes,
            request_id,
        })
    }
}

impl TryFrom<pb::CreatePoolRequest> for PoolSpec {
    type Error = Status;

    fn try_from(r: pb::CreatePoolRequest) -> Result<Self, Status> {
        let pb::CreatePoolRequest {
            name,
            rule,
            pg_count,
        } = r;
        check_name("pool", &name)?;
        let pb::Rule {
            replicas,
            min_replicas,
            failure_domain,
            tag_filter,
        } = rule.ok_or_else(|| Status::invalid_argument("pool needs a rule"))?;
        if replicas == 0 {
            return Err(Status::invalid_argument("replicas must not be zero"));
        }
        if pg_count == 0 {
            return Err(Status::invalid_argument("pg_count must not be zero"));
        }
        if failure_domain.is_empty() {
            return Err(Status::invalid_argument("failure domain level is empty"));
        }
        Ok(PoolSpec {
            name,
            rule: Rule {
                replicas,
                // Zero asks for the default: a majority of the replicas.
                min_replicas: if min_replicas == 0 {
                    replicas / 2 + 1
                } else {
                    min_replicas
                },
                failure_domain,
                tag_filter: levels_in(tag_filter)?,
            },
            pg_count,
        })
    }
}

impl TryFrom<pb::RegisterNodeRequest> for NodeRegistration {
    type Error = Status;

    fn try_from(r: pb::RegisterNodeRequest) -> Result<Self, Status> {
        let pb::RegisterNodeRequest {
            id,
            rpc_addr,
            data_addr,
            location,
            disks,
        } = r;
        if id == 0 {
            return Err(Status::invalid_argument("node id must not be zero"));
        }
        // A member has a metadata address, a storage node a data address; a node has a role.
        if rpc_addr.is_empty() && data_addr.is_empty() {
            return Err(Status::invalid_argument(
                "node needs an rpc address (a member) or a data address (a storage node)",
            ));
        }
        for (what, addr) in [("rpc", &rpc_addr), ("data", &data_addr)] {
            if !addr.is_empty() && addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(Status::invalid_argument(format!(
                    "node {id}: {what} address {addr:?} is not IP:PORT"
                )));
            }
        }
        Ok(NodeRegistration {
            id,
            rpc_addr,
            data_addr,
            location: Location {
                levels: levels_in(location.map(|l| l.levels).unwrap_or_default())?,
            },
            disks: disks
                .into_iter()
                .map(|d| DiskInfo {
                    name: d.name,
                    capacity_bytes: d.capacity_bytes,
                })
                .collect(),
        })
    }
}

/// Checks the new size of a resize.
pub fn resize_in(r: pb::ResizeVolumeRequest) -> Result<(String, u64), Status> {
    check_name("volume", &r.name)?;
    check_size("size", r.size_bytes)?;
    Ok((r.name, r.size_bytes))
}

/// The attach epoch a membership change acts under. A request without one (a client from
/// before the fence, which sends 0) is refused rather than let past the fence.
fn attach_epoch_in(attach_epoch: u64) -> Result<u64, Status> {
    if attach_epoch == 0 {
        return Err(Status::invalid_argument(
            "attach_epoch is required: membership changes are fenced by the caller's attach epoch",
        ));
    }
    Ok(attach_epoch)
}

/// Which way a replica changes membership.
#[derive(Clone, Copy, Debug)]
pub enum ReplicaChange {
    Remove,
    Restore,
}

/// The fenced command of a `RemoveReplica` or `RestoreReplica` request.
pub fn replica_change_in(
    change: ReplicaChange,
    r: pb::ReplicaRequest,
) -> Result<CommandV1, Status> {
    let pb::ReplicaRequest {
        volume,
        pg,
        node,
        attach_epoch,
    } = r;
    check_name("volume", &volume)?;
    let attach_epoch = attach_epoch_in(attach_epoch)?;
    Ok(match change {
        ReplicaChange::Remove => CommandV1::RemoveReplicaV2 {
            volume,
            pg,
            node,
            attach_epoch,
        },
        ReplicaChange::Restore => CommandV1::RestoreReplicaV2 {
            volume,
            pg,
            node,
            attach_epoch,
        },
    })
}

/// Most PGs one scrub report may carry (a pool has at most this many).
const SCRUB_REPORT_PGS_MAX: usize = crate::meta::model::PG_COUNT_MAX as usize;

/// The fenced command of a `ReportScrub` request.
pub fn report_scrub_in(r: pb::ReportScrubRequest) -> Result<CommandV1, Status> {
    let pb::ReportScrubRequest {
        volume,
        attach_epoch,
        deep,
        started_ms,
        pgs,
        fulfils_ms,
    } = r;
    check_name("volume", &volume)?;
    if pgs.len() > SCRUB_REPORT_PGS_MAX {
        return Err(Status::invalid_argument(format!(
            "a scrub report names at most {SCRUB_REPORT_PGS_MAX} PGs"
        )));
    }
    Ok(CommandV1::ReportScrub {
        volume,
        attach_epoch: attach_epoch_in(attach_epoch)?,
        deep,
        started_ms,
        pgs: pgs
            .into_iter()
            .map(|p| crate::meta::model::PgScrubReport {
                pg: p.pg,
                errors: p.errors,
                repaired: p.repaired,
                unrepaired: p.unrepaired,
            })
            .collect(),
        fulfils: fulfils_ms,
    })
}

/// The fenced command of a `ReportRebuild` request.
pub fn report_rebuild_in(r: pb::ReportRebuildRequest) -> Result<CommandV1, Status> {
    let pb::ReportRebuildRequest {
        volume,
        progress,
        attach_epoch,
    } = r;
    check_name("volume", &volume)?;
    let pb::RebuildProgress {
        pg,
        node,
        done_bytes,
        total_bytes,
    } = progress.ok_or_else(|| Status::invalid_argument("progress is required"))?;
    Ok(CommandV1::ReportRebuildV2 {
        volume,
        progress: RebuildProgress {
            pg,
            node,
            done_bytes,
            total_bytes,
        },
        attach_epoch: attach_epoch_in(attach_epoch)?,
    })
}

/// The fenced command of a `DetachVolume` request.
pub fn detach_in(r: pb::DetachVolumeRequest) -> Result<CommandV1, Status> {
    let pb::DetachVolumeRequest {
        name,
        client,
        attach_epoch,
    } = r;
    check_name("volume", &name)?;
    if client.is_empty() {
        return Err(Status::invalid_argument("detach needs the client name"));
    }
    Ok(CommandV1::DetachVolumeV2 {
        name,
        client,
        attach_epoch: attach_epoch_in(attach_epoch)?,
    })
}

impl From<&Location> for pb::Location {
    fn from(l: &Location) -> Self {
        pb::Location {
            levels: levels_out(&l.levels),
        }
    }
}

impl From<&DiskInfo> for pb::Disk {
    fn from(d: &DiskInfo) -> Self {
        pb::Disk {
            name: d.name.clone(),
            capacity_bytes: d.capacity_bytes,
        }
    }
}

impl From<&NodeRecord> for pb::Node {
    fn from(n: &NodeRecord) -> Self {
        let r = &n.registration;
        pb::Node {
            id: r.id,
            rpc_addr: r.rpc_addr.clone(),
            data_addr: r.data_addr.clone(),
            location: Some((&r.location).into()),
            disks: r.disks.iter().map(Into::into).collect(),
            health: match n.health {
                Health::Up => "up",
                Health::Down => "down",
            }
            .into(),
            membership: match n.participation {
                Participation::In => "in",
                Participation::Out => "out",
            }
            .into(),
            draining: n.draining,
            last_heartbeat_ms: n.last_heartbeat_ms,
        }
    }
}

impl From<&Pool> for pb::Pool {
    fn from(p: &Pool) -> Self {
        pool_out(p, None)
    }
}

/// The wire form of `p` with the PG entries in `pgs` only (all of them for `None`).
pub fn pool_out(p: &Pool, pgs: Option<&std::collections::BTreeSet<u32>>) -> pb::Pool {
    let rule = &p.spec.rule;
    let entry = |pg: usize| {
        Some(pb::PlacementGroup {
            pg: pg as u32,
            replicas: p.map.pgs.get(pg)?.clone(),
            disks: p.map.disks.get(pg)?.clone(),
            leaving: p
                .map
                .leaving
                .get(&(pg as u32))
                .map(|l| l.iter().copied().collect())
                .unwrap_or_default(),
        })
    };
    pb::Pool {
        name: p.spec.name.clone(),
        rule: Some(pb::Rule {
            replicas: rule.replicas,
            min_replicas: rule.min_replicas,
            failure_domain: rule.failure_domain.clone(),
            tag_filter: levels_out(&rule.tag_filter),
        }),
        pg_count: p.spec.pg_count,
        map_epoch: p.map.epoch,
        cluster_map_epoch: p.map.map_epoch,
        pgs: match pgs {
            None => (0..p.map.pgs.len()).filter_map(entry).collect(),
            Some(pgs) => pgs.iter().filter_map(|&pg| entry(pg as usize)).collect(),
        },
    }
}

impl From<&Volume> for pb::Volume {
    fn from(v: &Volume) -> Self {
        pb::Volume {
            id: v.id,
            name: v.spec.name.clone(),
            pool: v.spec.pool.clone(),
            size_bytes: v.spec.size_bytes,
            extent_size_bytes: v.spec.extent_size_bytes,
            state: if v.attachment.is_some() {
                "attached"
            } else {
                "available"
            }
            .into(),
            attach_epoch: v.attach_epoch,
            attached_to: v
                .attachment
                .as_ref()
                .map(|a| a.client.clone())
                .unwrap_or_default(),
            stale: v
                .stale
                .iter()
                .map(|(pg, nodes)| pb::StaleReplicas {
                    pg: *pg,
                    nodes: nodes.iter().copied().collect(),
                })
                .collect(),
            rebuilding: v
                .rebuilding
                .iter()
                .map(|r| pb::RebuildProgress {
                    pg: r.pg,
                    node: r.node,
                    done_bytes: r.done_bytes,
                    total_bytes: r.total_bytes,
                })
                .collect(),
            qos: Some(pb::VolumeQos {
                iops_limit: v.qos.iops_limit,
                bps_limit: v.qos.bps_limit,
                iops_reservation: v.qos.iops_reservation,
                weight: v.qos.weight,
            }),
            scrub: Some(pb::VolumeScrub {
                requested_ms: v.scrub.requested.map_or(0, |r| r.at_ms),
                requested_deep: v.scrub.requested.is_some_and(|r| r.deep),
                pgs: v
                    .scrub
                    .pgs
                    .iter()
                    .map(|(&pg, s)| pb::PgScrub {
                        pg,
                        last_ms: s.last_ms,
                        last_deep_ms: s.last_deep_ms,
                        errors: s.errors,
                        repaired: s.repaired,
                        unrepaired: s.unrepaired,
                        errors_total: s.errors_total,
                        repaired_total: s.repaired_total,
                    })
                    .collect(),
            }),
        }
    }
}

/// The wire form of an attachment.
pub fn attachment_out(volume: &str, a: &Attachment) -> pb::Attachment {
    pb::Attachment {
        volume: volume.to_string(),
        client: a.client.clone(),
        attach_epoch: a.epoch,
        // Signed by the service for the caller, when it has a principal.
        capability: Vec::new(),
        capability_expires_at_unix_ms: 0,
    }
}

impl From<&Plan> for pb::BalancePlan {
    fn from(p: &Plan) -> Self {
        pb::BalancePlan {
            pool: p.pool.clone(),
            pool_epoch: p.pool_epoch,
            moves: p
                .moves
                .iter()
                .map(|m| pb::BalanceMove {
                    pg: m.pg,
                    from_node: m.from_node,
                    to_node: m.to_node,
                    from_disk: m.from_disk,
                    to_disk: m.to_disk,
                    bytes: m.bytes,
                })
                .collect(),
            moves_wanted: p.moves_wanted as u32,
            nodes: p
                .nodes
                .iter()
                .map(|n| pb::NodeLoad {
                    node: n.node,
                    replicas_before: n.replicas_before,
                    replicas_after: n.replicas_after,
                    bytes_before: n.bytes_before,
                    bytes_after: n.bytes_after,
                })
                .collect(),
            unbalanced_disks_before: p.unbalanced_disks_before as u32,
            unbalanced_disks_after: p.unbalanced_disks_after as u32,
            violations_after: p.violations_after,
            applied_epoch: p.pool_epoch,
        }
    }
}
