//! The metadata gRPC service (`proto::meta::Metadata`) of one member. Each handler converts the
//! request at the edge ([`convert`]), runs one write or linearizable read through
//! [`Member`], and converts the answer back.

mod approval;
mod audit;
pub mod authz;
mod capability;
pub mod convert;
mod drift;
mod infer;
pub mod infer_convert;
pub mod join;
mod policy;
mod renew;
mod residency;
mod trust;
pub mod watch;

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use openraft::ServerState;
use proto::meta as pb;
use proto::meta::metadata_server::Metadata;
use tonic::{Request, Response, Status};

use self::authz::Authorized;
use self::convert::{
    ReplicaChange, attachment_out, detach_in, replica_change_in, report_rebuild_in,
    report_scrub_in, resize_in, status_of,
};
use super::auth::{Target, Verb};
use super::balance::{BALANCE_MOVES_MAX, Plan};
use super::command::{Applied, CommandError, CommandV1};
use super::detector::{Beat, Detector};
use super::member::Member;
use super::member::MetaError;
use super::model::{NodeRegistration, Participation, PoolSpec, QosChange, VolumeSpec};
use super::query::{Query, QueryReply};
use super::types::MemberNode;

/// `command` as the call `auth` made.
fn audited(auth: &Authorized, command: CommandV1) -> CommandV1 {
    CommandV1::Audited {
        call: auth.call.clone(),
        command: Box::new(command),
    }
}

/// Serves the metadata API of one member.
pub struct MetadataService {
    pub member: Arc<Member>,
    pub detector: Arc<Detector>,
    /// What nodes report about themselves, while this member leads.
    pub drift: Arc<super::drift::DriftTable>,
    /// The CA of `fabricd node --ca-dir`, which renews nodes' certificates.
    pub signer: Option<Arc<crate::identity::ca::CertificateAuthority>>,
    /// Embed jobs, while this member leads (see `crate::embed`).
    pub infer: Arc<crate::embed::leader::InferLeader>,
}

impl MetadataService {
    /// Writes `command` as `auth`'s call, wrapped so that it applies at most once when the
    /// client named the request (`request_id` not empty).
    async fn write_once(
        &self,
        auth: &Authorized,
        request_id: String,
        command: CommandV1,
    ) -> Result<Applied, Status> {
        let audited = audited(auth, command);
        if request_id.is_empty() {
            return self.write_raw(audited).await;
        }
        self.write_raw(CommandV1::Once {
            request_id,
            command: Box::new(audited),
        })
        .await
    }

    /// Writes `command` as `auth`'s call: its audit entry and the change commit together, or
    /// (the log being full) neither.
    async fn write(&self, auth: &Authorized, command: CommandV1) -> Result<Applied, Status> {
        self.write_raw(audited(auth, command)).await
    }

    async fn write_raw(&self, command: CommandV1) -> Result<Applied, Status> {
        match self.member.write(command.into()).await {
            Ok((applied, _)) => Ok(applied),
            Err(e) => {
                if matches!(e, MetaError::Command(CommandError::AuditFull(_))) {
                    self.member
                        .audit_refused_full
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(status_of(e))
            }
        }
    }

    /// Writes a command whose result is a volume, and answers that volume.
    async fn volume_change(
        &self,
        auth: &Authorized,
        command: CommandV1,
    ) -> Result<Response<pb::Volume>, Status> {
        match self.write(auth, command).await? {
            Applied::Volume(v) => Ok(Response::new(pb::Volume::from(&v))),
            _ => Err(unexpected("volume change")),
        }
    }

    async fn read(&self, query: Query) -> Result<QueryReply, Status> {
        self.member.read(query).await.map_err(status_of)
    }

    /// The balancer's plan for the request's pool and budget, read on the leader.
    async fn balance_plan(&self, req: pb::BalanceRequest) -> Result<Plan, Status> {
        let pb::BalanceRequest {
            pool,
            max_moves,
            max_bytes,
        } = req;
        let query = Query::BalancePlan {
            pool,
            moves_max: match max_moves {
                0 => BALANCE_MOVES_MAX,
                n => n as usize,
            },
            bytes_max: match max_bytes {
                0 => u64::MAX,
                n => n,
            },
        };
        match self.read(query).await? {
            QueryReply::BalancePlan(plan) => {
                plan.map_err(|e| status_of(crate::meta::member::MetaError::Command(e)))
            }
            _ => Err(unexpected("balance plan")),
        }
    }

    fn members(&self) -> Vec<pb::Member> {
        let metrics = self.member.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                rpc_addr: node.rpc_addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }
}

/// Most probe answers one heartbeat may carry.
pub const HEARTBEAT_REPORTS_MAX: usize = 1024;

fn unexpected(what: &str) -> Status {
    Status::internal(format!("unexpected result of {what}"))
}

/// The name of a Raft role, as `status` reports it.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl Metadata for MetadataService {
    async fn add_infer_model(
        &self,
        req: Request<tonic::Streaming<pb::InferModelChunk>>,
    ) -> Result<Response<pb::InferModel>, Status> {
        self.infer_add_model(req).await
    }

    async fn list_infer_models(
        &self,
        req: Request<pb::ListInferModelsRequest>,
    ) -> Result<Response<pb::InferModels>, Status> {
        self.infer_list_models(req).await
    }

    type FetchInferModelFileStream = infer::FileStream;

    async fn fetch_infer_model_file(
        &self,
        req: Request<pb::FetchInferModelFileRequest>,
    ) -> Result<Response<Self::FetchInferModelFileStream>, Status> {
        self.infer_fetch_model_file(req).await
    }

    async fn create_infer_job(
        &self,
        req: Request<pb::CreateInferJobRequest>,
    ) -> Result<Response<pb::InferJob>, Status> {
        self.infer_create_job(req).await
    }

    async fn list_infer_jobs(
        &self,
        req: Request<pb::ListInferJobsRequest>,
    ) -> Result<Response<pb::InferJobs>, Status> {
        self.infer_list_jobs(req).await
    }

    async fn get_infer_job(
        &self,
        req: Request<pb::GetInferJobRequest>,
    ) -> Result<Response<pb::InferJob>, Status> {
        self.infer_get_job(req).await
    }

    async fn cancel_infer_job(
        &self,
        req: Request<pb::GetInferJobRequest>,
    ) -> Result<Response<pb::InferJob>, Status> {
        self.infer_cancel_job(req).await
    }

    async fn poll_infer_work(
        &self,
        req: Request<pb::PollInferWorkRequest>,
    ) -> Result<Response<pb::InferWork>, Status> {
        self.infer_poll(req).await
    }

    async fn submit_infer_output(
        &self,
        req: Request<pb::SubmitInferOutputRequest>,
    ) -> Result<Response<pb::InferJob>, Status> {
        self.infer_submit(req).await
    }

    async fn release_infer_task(
        &self,
        req: Request<pb::ReleaseInferTaskRequest>,
    ) -> Result<Response<pb::InferJob>, Status> {
        self.infer_release(req).await
    }

    async fn search_vectors(
        &self,
        req: Request<pb::SearchVectorsRequest>,
    ) -> Result<Response<pb::SearchVectorsReply>, Status> {
        self.infer_search(req).await
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        self.authorize_cluster(&req, Verb::ClusterStatus).await?;
        let m = self.member.metrics();
        Ok(Response::new(pb::NodeStatus {
            id: self.member.id,
            rpc_addr: self.member.rpc_addr.clone(),
            pid: std::process::id(),
            role: role_name(m.state).into(),
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_applied_index: m.last_applied.as_ref().map_or(0, |l| l.index()),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.as_ref().map_or(0, |l| l.index()),
            members: self.members(),
            purged_index: m.purged.as_ref().map_or(0, |l| l.index()),
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesReply>, Status> {
        self.authorize_cluster(&req, Verb::NodeList).await?;
        match self.read(Query::Nodes).await? {
            QueryReply::Nodes(nodes) => Ok(Response::new(pb::ListNodesReply {
                nodes: nodes.iter().map(pb::Node::from).collect(),
            })),
            _ => Err(unexpected("list nodes")),
        }
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        self.authorize_node_itself(&req, Verb::NodeHeartbeat, req.get_ref().node)
            .await?;
        let req = req.into_inner();
        if req.node == 0 {
            return Err(Status::invalid_argument("node id 0 is not a node"));
        }
        if req.reports.len() > HEARTBEAT_REPORTS_MAX {
            return Err(Status::invalid_argument(format!(
                "{} probe reports in one heartbeat; at most {HEARTBEAT_REPORTS_MAX}",
                req.reports.len()
            )));
        }
        let reports: Vec<(u64, bool)> = req.reports.iter().map(|r| (r.node, r.reachable)).collect();
        let reply = match self.detector.heartbeat(&self.member, req.node, &reports) {
            Beat::Accepted { probes } => {
                let observed = self.observe_drift(&req);
                pb::HeartbeatReply {
                    accepted: true,
                    leader_addr: self.member.rpc_addr.clone(),
                    probes: probes
                        .into_iter()
                        .map(|(node, data_addr)| pb::ProbeTarget { node, data_addr })
                        .collect(),
                    drift_known: observed.known,
                    repair: observed.repair,
                }
            }
            Beat::NotLeader { leader_addr } => pb::HeartbeatReply {
                accepted: false,
                leader_addr: leader_addr.unwrap_or_default(),
                probes: Vec::new(),
                drift_known: String::new(),
                repair: Vec::new(),
            },
            Beat::Unknown => {
                return Err(Status::not_found(format!(
                    "node {} is not registered",
                    req.node
                )));
            }
        };
        Ok(Response::new(reply))
    }

    async fn register_node(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let auth = self
            .authorize_node_itself(&req, Verb::NodeRegister, req.get_ref().id)
            .await?;
        let reg = NodeRegistration::try_from(req.into_inner())?;
        // A node that restarts unchanged is registered already: nothing to write. (A member
        // that lags may miss the record and write it again, which changes nothing.)
        let known = self.member.sm.read(|s, _| {
            s.nodes
                .get(&reg.id)
                .filter(|n| n.registration == reg)
                .cloned()
        });
        if let Some(n) = known {
            return Ok(Response::new(pb::Node::from(&n)));
        }
        match self.write(&auth, CommandV1::RegisterNode(reg)).await? {
            Applied::Node(n) => Ok(Response::new(pb::Node::from(&n))),
            _ => Err(unexpected("register node")),
        }
    }

    async fn set_node_participation(
        &self,
        req: Request<pb::NodeParticipationRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let auth = self.authorize_cluster(&req, Verb::NodeOut).await?;
        let pb::NodeParticipationRequest { node, out } = req.into_inner();
        let participation = if out {
            Participation::Out
        } else {
            Participation::In
        };
        match self
            .write(
                &auth,
                CommandV1::SetParticipation {
                    node,
                    participation,
                },
            )
            .await?
        {
            Applied::Node(n) => Ok(Response::new(pb::Node::from(&n))),
            _ => Err(unexpected("set node participation")),
        }
    }

    async fn set_node_draining(
        &self,
        req: Request<pb::NodeDrainingRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let auth = self.authorize_cluster(&req, Verb::NodeDrain).await?;
        let pb::NodeDrainingRequest { node, draining } = req.into_inner();
        match self
            .write(&auth, CommandV1::SetDraining { node, draining })
            .await?
        {
            Applied::Node(n) => Ok(Response::new(pb::Node::from(&n))),
            _ => Err(unexpected("set node draining")),
        }
    }

    async fn plan_balance(
        &self,
        req: Request<pb::BalanceRequest>,
    ) -> Result<Response<pb::BalancePlan>, Status> {
        let pool = Target::Pool(req.get_ref().pool.clone());
        self.authorize(&req, Verb::BalancePlan, pool).await?;
        let plan = self.balance_plan(req.into_inner()).await?;
        Ok(Response::new(pb::BalancePlan::from(&plan)))
    }

    async fn apply_balance(
        &self,
        req: Request<pb::BalanceRequest>,
    ) -> Result<Response<pb::BalancePlan>, Status> {
        let pool = Target::Pool(req.get_ref().pool.clone());
        let auth = self.authorize(&req, Verb::BalanceApply, pool).await?;
        let plan = self.balance_plan(req.into_inner()).await?;
        let command = CommandV1::Rebalance {
            pool: plan.pool.clone(),
            pool_epoch: plan.pool_epoch,
            moves: plan.disk_moves(),
        };
        match self.write(&auth, command).await? {
            Applied::Pool(p) => Ok(Response::new(pb::BalancePlan {
                applied_epoch: p.map.epoch,
                ..pb::BalancePlan::from(&plan)
            })),
            _ => Err(unexpected("apply balance")),
        }
    }

    async fn create_pool(
        &self,
        req: Request<pb::CreatePoolRequest>,
    ) -> Result<Response<pb::Pool>, Status> {
        let auth = self.authorize_cluster(&req, Verb::PoolCreate).await?;
        let spec = PoolSpec::try_from(req.into_inner())?;
        match self.write(&auth, CommandV1::CreatePool(spec)).await? {
            Applied::Pool(p) => Ok(Response::new(pb::Pool::from(&p))),
            _ => Err(unexpected("create pool")),
        }
    }

    async fn list_pools(
        &self,
        req: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsReply>, Status> {
        self.authorize_cluster(&req, Verb::PoolList).await?;
        match self.read(Query::Pools).await? {
            QueryReply::Pools(pools) => Ok(Response::new(pb::ListPoolsReply {
                pools: pools.iter().map(pb::Pool::from).collect(),
            })),
            _ => Err(unexpected("list pools")),
        }
    }

    async fn delete_pool(
        &self,
        req: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::DeletePoolReply>, Status> {
        let pool = Target::Pool(req.get_ref().name.clone());
        let auth = self.authorize(&req, Verb::PoolDelete, pool).await?;
        let pb::DeletePoolRequest { name, request_id } = req.into_inner();
        match self
            .guarded_write(
                &auth,
                "pool.delete",
                request_id,
                CommandV1::DeletePool { name },
            )
            .await?
        {
            Applied::Deleted => Ok(Response::new(pb::DeletePoolReply {})),
            _ => Err(unexpected("delete pool")),
        }
    }

    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let pool = Target::Pool(req.get_ref().pool.clone());
        let auth = self.authorize(&req, Verb::VolumeCreate, pool).await?;
        let spec = VolumeSpec::try_from(req.into_inner())?;
        match self.write(&auth, CommandV1::CreateVolume(spec)).await? {
            Applied::Volume(v) => Ok(Response::new(pb::Volume::from(&v))),
            _ => Err(unexpected("create volume")),
        }
    }

    /// Lists the volumes of the pools where the caller holds `volume.list`.
    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesReply>, Status> {
        let caller = authz::caller(&req)?;
        match self.read(Query::Volumes).await? {
            QueryReply::Volumes(volumes) => Ok(Response::new(pb::ListVolumesReply {
                volumes: self.member.sm.read(|s, _| {
                    volumes
                        .iter()
                        .filter(|v| {
                            let pool = Target::Pool(v.spec.pool.clone());
                            authz::decide(&s.policy, &caller, Verb::VolumeList, &pool).is_ok()
                        })
                        .map(pb::Volume::from)
                        .collect()
                }),
            })),
            _ => Err(unexpected("list volumes")),
        }
    }

    async fn get_volume(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        self.authorize_volume(&req, Verb::VolumeGet, &req.get_ref().name)
            .await?;
        let name = req.into_inner().name;
        match self.read(Query::Volume(name.clone())).await? {
            QueryReply::Volume(Some(v)) => Ok(Response::new(pb::Volume::from(&v))),
            QueryReply::Volume(None) => Err(Status::not_found(format!("volume {name} not found"))),
            _ => Err(unexpected("get volume")),
        }
    }

    async fn get_volume_map(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::VolumeMap>, Status> {
        self.authorize_volume(&req, Verb::VolumeGet, &req.get_ref().name)
            .await?;
        let name = req.into_inner().name;
        match self.read(Query::VolumeMap(name.clone())).await? {
            QueryReply::VolumeMap(Some(m)) => Ok(Response::new(pb::VolumeMap {
                applied_index: m.applied_index,
                volume: Some(pb::Volume::from(&m.volume)),
                pool: Some(pb::Pool::from(&m.pool)),
                nodes: m.nodes.iter().map(pb::Node::from).collect(),
            })),
            QueryReply::VolumeMap(None) => {
                Err(Status::not_found(format!("volume {name} not found")))
            }
            _ => Err(unexpected("get volume map")),
        }
    }

    async fn resize_volume(
        &self,
        req: Request<pb::ResizeVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let auth = self
            .authorize_volume(&req, Verb::VolumeResize, &req.get_ref().name)
            .await?;
        let req = req.into_inner();
        let request_id = req.request_id.clone();
        let (name, size_bytes) = resize_in(req)?;
        match self
            .write_once(
                &auth,
                request_id,
                CommandV1::ResizeVolume { name, size_bytes },
            )
            .await?
        {
            Applied::Volume(v) => Ok(Response::new(pb::Volume::from(&v))),
            _ => Err(unexpected("resize volume")),
        }
    }

    async fn set_volume_qos(
        &self,
        req: Request<pb::SetVolumeQosRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let auth = self
            .authorize_volume(&req, Verb::VolumeQos, &req.get_ref().name)
            .await?;
        let r = req.into_inner();
        let change = QosChange {
            iops_limit: r.iops_limit,
            bps_limit: r.bps_limit,
            iops_reservation: r.iops_reservation,
            weight: r.weight,
        };
        let command = CommandV1::SetVolumeQos {
            name: r.name,
            change,
        };
        match self.write(&auth, command).await? {
            Applied::Volume(v) => Ok(Response::new(pb::Volume::from(&v))),
            _ => Err(unexpected("set volume qos")),
        }
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeReply>, Status> {
        let auth = self
            .authorize_volume(&req, Verb::VolumeDelete, &req.get_ref().name)
            .await?;
        let pb::DeleteVolumeRequest { name, request_id } = req.into_inner();
        let delete = CommandV1::DeleteVolume { name };
        match self
            .guarded_write(&auth, "volume.delete", request_id, delete)
            .await?
        {
            Applied::Deleted => Ok(Response::new(pb::DeleteVolumeReply {})),
            _ => Err(unexpected("delete volume")),
        }
    }

    async fn detach_volume(
        &self,
        req: Request<pb::DetachVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let auth = self
            .authorize_volume(&req, Verb::VolumeDetach, &req.get_ref().name)
            .await?;
        self.volume_change(&auth, detach_in(req.into_inner())?)
            .await
    }

    async fn attach_volume(
        &self,
        req: Request<pb::AttachVolumeRequest>,
    ) -> Result<Response<pb::Attachment>, Status> {
        let verb = match req.get_ref().force {
            true => Verb::VolumeForceAttach,
            false => Verb::VolumeAttach,
        };
        let auth = self
            .authorize_volume(&req, verb, &req.get_ref().name)
            .await?;
        let caller = auth.caller.clone();
        let pb::AttachVolumeRequest {
            name,
            client,
            force,
            request_id,
        } = req.into_inner();
        let attach = CommandV1::AttachVolume {
            name,
            client,
            force,
        };
        let written = match force {
            true => {
                self.guarded_write(&auth, "volume.force_attach", request_id, attach)
                    .await?
            }
            false => self.write_once(&auth, request_id, attach).await?,
        };
        match written {
            Applied::Attached { volume, attachment } => {
                let mut out = attachment_out(&volume, &attachment);
                self.sign_capability(&caller, &volume, attachment.epoch, &mut out)?;
                Ok(Response::new(out))
            }
            _ => Err(unexpected("attach volume")),
        }
    }

    async fn remove_replica(
        &self,
        req: Request<pb::ReplicaRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let auth = self
            .authorize_volume(&req, Verb::ReplicaReport, &req.get_ref().volume)
            .await?;
        self.volume_change(
            &auth,
            replica_change_in(ReplicaChange::Remove, req.into_inner())?,
        )
        .await
    }

    async fn report_rebuild(
        &self,
        req: Request<pb::ReportRebuildRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let auth = self
            .authorize_volume(&req, Verb::ReplicaReport, &req.get_ref().volume)
            .await?;
        self.volume_change(&auth, report_rebuild_in(req.into_inner())?)
            .await
    }

    async fn start_scrub(
        &self,
        req: Request<pb::StartScrubRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let auth = self
            .authorize_volume(&req, Verb::VolumeScrub, &req.get_ref().volume)
            .await?;
        let r = req.into_inner();
        let command = CommandV1::RequestScrub {
            name: r.volume,
            deep: r.deep,
            at_ms: crate::meta::clock::unix_ms(),
        };
        self.volume_change(&auth, command).await
    }

    async fn report_scrub(
        &self,
        req: Request<pb::ReportScrubRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let auth = self
            .authorize_volume(&req, Verb::ReplicaReport, &req.get_ref().volume)
            .await?;
        self.volume_change(&auth, report_scrub_in(req.into_inner())?)
            .await
    }

    async fn restore_replica(
        &self,
        req: Request<pb::ReplicaRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let auth = self
            .authorize_volume(&req, Verb::ReplicaReport, &req.get_ref().volume)
            .await?;
        self.volume_change(
            &auth,
            replica_change_in(ReplicaChange::Restore, req.into_inner())?,
        )
        .await
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let auth = self.authorize_cluster(&req, Verb::ClusterWatch).await?;
        let caller = auth.caller.clone();
        let req = req.into_inner();
        if req.volume_names.len() > watch::WATCH_NAMES_MAX {
            return Err(Status::invalid_argument(format!(
                "{} volume names; a watch follows at most {} by name",
                req.volume_names.len(),
                watch::WATCH_NAMES_MAX
            )));
        }
        let filter = watch::Filter {
            nodes: !req.exclude_nodes,
            pools: !req.exclude_pools,
            volumes: !req.exclude_volumes,
            names: (!req.volume_names.is_empty())
                .then(|| Arc::new(req.volume_names.into_iter().collect())),
        };
        let events = watch::stream(self.member.sm.clone(), req.since_epoch, filter);
        Ok(Response::new(Box::pin(authz::while_allowed(
            events,
            self.member.sm.clone(),
            caller,
            Verb::ClusterWatch,
        ))))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let auth = self.authorize_cluster(&req, Verb::RaftAddLearner).await?;
        let pb::AddLearnerRequest { id, rpc_addr } = req.into_inner();
        if id == 0 || rpc_addr.is_empty() {
            return Err(Status::invalid_argument(
                "a learner needs a non-zero id and an rpc address",
            ));
        }
        self.write(&auth, CommandV1::Noted).await?;
        self.member
            .raft
            .add_learner(id, MemberNode { rpc_addr }, true)
            .await
            .map_err(membership_status)?;
        Ok(Response::new(pb::MembershipReply {
            members: self.members(),
        }))
    }

    async fn change_voters(
        &self,
        req: Request<pb::ChangeVotersRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let auth = self.authorize_cluster(&req, Verb::RaftChangeVoters).await?;
        let voters: BTreeSet<u64> = req.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("the voter set must not be empty"));
        }
        let change = CommandV1::ChangeVoters {
            voters: voters.clone(),
        };
        self.guarded_write(&auth, "raft.change_voters", String::new(), change)
            .await?;
        self.change_voters_now(voters).await?;
        Ok(Response::new(pb::MembershipReply {
            members: self.members(),
        }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.get_policy_call(req).await
    }

    async fn list_roles(
        &self,
        req: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesReply>, Status> {
        self.list_roles_call(req).await
    }

    async fn change_policy(
        &self,
        req: Request<pb::PolicyChange>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.change_policy_call(req).await
    }

    async fn can_i(
        &self,
        req: Request<pb::CanIRequest>,
    ) -> Result<Response<pb::CanIReply>, Status> {
        self.can_i_call(req).await
    }

    async fn renew_capability(
        &self,
        req: Request<pb::RenewCapabilityRequest>,
    ) -> Result<Response<pb::Attachment>, Status> {
        self.renew_capability_call(req).await
    }

    async fn get_cell_keys(
        &self,
        req: Request<pb::GetCellKeysRequest>,
    ) -> Result<Response<pb::CellKeys>, Status> {
        self.get_cell_keys_call(req).await
    }

    async fn revoke_certificate(
        &self,
        req: Request<pb::RevokedCertificate>,
    ) -> Result<Response<pb::Revocations>, Status> {
        self.revoke_certificate_call(req).await
    }

    async fn list_revocations(
        &self,
        req: Request<pb::ListRevocationsRequest>,
    ) -> Result<Response<pb::Revocations>, Status> {
        self.list_revocations_call(req).await
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenInfo>, Status> {
        self.create_join_token_call(req).await
    }

    async fn list_join_tokens(
        &self,
        req: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensReply>, Status> {
        self.list_join_tokens_call(req).await
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::AuditEntries>, Status> {
        self.list_audit_call(req).await
    }

    async fn get_audit_head(
        &self,
        req: Request<pb::GetAuditHeadRequest>,
    ) -> Result<Response<pb::AuditHead>, Status> {
        self.get_audit_head_call(req).await
    }

    async fn configure_audit(
        &self,
        req: Request<pb::ConfigureAuditRequest>,
    ) -> Result<Response<pb::AuditHead>, Status> {
        self.configure_audit_call(req).await
    }

    async fn cosign_audit(
        &self,
        req: Request<pb::CosignAuditRequest>,
    ) -> Result<Response<pb::AuditHead>, Status> {
        self.cosign_audit_call(req).await
    }

    async fn list_approvals(
        &self,
        req: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::Approvals>, Status> {
        self.list_approvals_call(req).await
    }

    async fn approve(
        &self,
        req: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::ApprovalInfo>, Status> {
        self.approve_call(req).await
    }

    async fn deny_approval(
        &self,
        req: Request<pb::DenyApprovalRequest>,
    ) -> Result<Response<pb::ApprovalInfo>, Status> {
        self.deny_approval_call(req).await
    }

    async fn set_guard(
        &self,
        req: Request<pb::SetGuardRequest>,
    ) -> Result<Response<pb::Approvals>, Status> {
        self.set_guard_call(req).await
    }

    async fn set_labels(
        &self,
        req: Request<pb::SetLabelsRequest>,
    ) -> Result<Response<pb::Labels>, Status> {
        self.set_labels_call(req).await
    }

    async fn list_labels(
        &self,
        req: Request<pb::ListLabelsRequest>,
    ) -> Result<Response<pb::Labels>, Status> {
        self.list_labels_call(req).await
    }

    async fn volume_residency(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::ResidencyStatement>, Status> {
        self.volume_residency_call(req).await
    }

    async fn list_drift(
        &self,
        req: Request<pb::ListDriftRequest>,
    ) -> Result<Response<pb::DriftReport>, Status> {
        self.list_drift_call(req).await
    }

    async fn except_drift(
        &self,
        req: Request<pb::ExceptDriftRequest>,
    ) -> Result<Response<pb::DriftReport>, Status> {
        self.except_drift_call(req).await
    }

    async fn accept_drift(
        &self,
        req: Request<pb::AcceptDriftRequest>,
    ) -> Result<Response<pb::DriftReport>, Status> {
        self.accept_drift_call(req).await
    }

    async fn rotate_cell_key(
        &self,
        req: Request<pb::RotateCellKeyRequest>,
    ) -> Result<Response<pb::CellKeys>, Status> {
        self.rotate_cell_key_call(req).await
    }

    async fn get_trust(
        &self,
        req: Request<pb::GetTrustRequest>,
    ) -> Result<Response<pb::TrustBundle>, Status> {
        self.get_trust_call(req).await
    }

    async fn change_trust(
        &self,
        req: Request<pb::ChangeTrustRequest>,
    ) -> Result<Response<pb::TrustBundle>, Status> {
        self.change_trust_call(req).await
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        self.renew_certificate_call(req).await
    }
}

impl MetadataService {
    /// Makes the Raft voters `voters` (after the call was audited, and approved if guarded).
    async fn change_voters_now(&self, voters: BTreeSet<u64>) -> Result<(), Status> {
        self.member
            .raft
            .change_membership(voters, false)
            .await
            .map_err(membership_status)?;
        Ok(())
    }
}

fn membership_status<E: std::fmt::Display>(e: E) -> Status {
    let msg = e.to_string();
    if msg.contains("forward") || msg.contains("leader") {
        Status::unavailable(format!("not the leader: {msg}"))
    } else {
        Status::failed_precondition(msg)
    }
}
