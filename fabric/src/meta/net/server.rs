//! The receiving side of the Raft transport: decodes a peer's request, hands it to openraft (or
//! to the local member for forwarded requests) and encodes the result. Errors travel inside the
//! payload as text, so a transport failure and a Raft-level refusal stay distinguishable.

use std::sync::Arc;
use std::time::Duration;

use proto::raft::raft_service_server::RaftService;
use proto::raft::{RaftPayload, SnapshotChunk};
use tonic::{Request, Response, Status, Streaming};

use super::SNAPSHOT_BYTES_MAX;
use super::forward::ForwardRequest;
use super::secure::{Caller, PeerInfo};
use crate::identity::PrincipalKind;
use crate::meta::member::Member;
use crate::meta::types::{Snapshot, SnapshotMeta, Vote};

/// How long the receiver waits for the next snapshot chunk.
pub const SNAPSHOT_CHUNK_DEADLINE_MS: u64 = 10_000;

/// Serves the Raft transport of one member.
pub struct RaftTransport {
    pub member: Arc<Member>,
}

impl RaftTransport {
    /// Only members of the group speak Raft to each other: the caller must be a node whose id
    /// is in the current membership (a voter or a learner). A node certificate alone does not
    /// make its holder a member. A member that belongs to no group yet (a voter of a group
    /// being bootstrapped, a learner being added) takes Raft from any node of the cluster: it
    /// learns its group from the first leader that reaches it.
    fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = req
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.caller.clone())
            .ok_or_else(|| Status::unauthenticated("the connection carries no identity"))?;
        let principal = match caller {
            Caller::InProcess => return Ok(()),
            Caller::Joiner => {
                return Err(Status::unauthenticated(
                    "a node without a certificate may not speak Raft",
                ));
            }
            Caller::Principal(p) => p,
        };
        let PrincipalKind::Node(id) = principal.kind() else {
            return Err(Status::permission_denied(format!(
                "{principal} may not speak Raft: only members of the metadata group do"
            )));
        };
        let metrics = self.member.metrics();
        let membership = metrics.membership_config.membership();
        let joined = membership.voter_ids().next().is_some();
        if joined && membership.get_node(id).is_none() {
            return Err(Status::permission_denied(format!(
                "{principal} may not speak Raft: node {id} is not a member of the metadata group"
            )));
        }
        Ok(())
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("decode: {e}")))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = serde_json::to_vec(value).map_err(|e| Status::internal(format!("encode: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl RaftService for RaftTransport {
    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let res = self
            .member
            .raft
            .vote(decode(req)?)
            .await
            .map_err(|e| e.to_string());
        reply(&res)
    }

    async fn pre_vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let res = self
            .member
            .raft
            .pre_vote(decode(req)?)
            .await
            .map_err(|e| e.to_string());
        reply(&res)
    }

    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let res = self
            .member
            .raft
            .append_entries(decode(req)?)
            .await
            .map_err(|e| e.to_string());
        reply(&res)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let mut stream = req.into_inner();
        let chunk_deadline = Duration::from_millis(SNAPSHOT_CHUNK_DEADLINE_MS);
        let mut header: Option<(Vote, SnapshotMeta)> = None;
        let mut data = Vec::new();
        loop {
            let next = tokio::time::timeout(chunk_deadline, stream.message())
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "no snapshot chunk within {chunk_deadline:?}"
                    ))
                })??;
            let Some(chunk) = next else { break };
            if !chunk.header.is_empty() {
                if header.is_some() {
                    return Err(Status::invalid_argument("snapshot header sent twice"));
                }
                header = Some(
                    serde_json::from_slice(&chunk.header)
                        .map_err(|e| Status::invalid_argument(format!("snapshot header: {e}")))?,
                );
            }
            if data.len() + chunk.data.len() > SNAPSHOT_BYTES_MAX {
                return Err(Status::resource_exhausted(format!(
                    "snapshot larger than {SNAPSHOT_BYTES_MAX} bytes"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        let (vote, meta) =
            header.ok_or_else(|| Status::invalid_argument("snapshot without header"))?;
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        let res = self
            .member
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string());
        reply(&res)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let reply_value = match decode::<ForwardRequest>(req)? {
            ForwardRequest::Write(command) => self.member.write_local(command).await,
            ForwardRequest::Read(query) => self.member.read_local(&query).await,
        };
        reply(&reply_value)
    }
}
