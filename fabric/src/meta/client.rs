//! A metadata client for tools and launchers: a list of member endpoints, one cached channel per
//! endpoint, and retries (on another member) while the group has no leader. Any member serves
//! any request — writes and linearizable reads are forwarded to the leader — so following the
//! leader is only a matter of moving on from members that are down.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proto::meta as pb;
use proto::meta::metadata_client::MetadataClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::net::MESSAGE_BYTES_MAX;
use super::net::client::PeerChannels;
use crate::identity::Transport;

/// How long a call keeps retrying while no member can serve it.
pub const CALL_RETRY_DEADLINE_MS: u64 = 30_000;
/// Deadline of one attempt (by default; see [`Client::attempt_deadline`]).
pub const ATTEMPT_DEADLINE_MS: u64 = 12_000;
/// Pause between attempts.
pub const RETRY_PAUSE_MS: u64 = 100;
/// Name of the file a member writes into its directory: `{"id", "rpc_addr", "pid"}`.
pub const NODE_FILE: &str = "node.json";

/// What a member writes about itself into its directory, for discovery.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeFile {
    pub id: u64,
    /// Empty for a storage-only node.
    pub rpc_addr: String,
    pub pid: u32,
    /// Where the node serves metrics, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
}

/// Errors of discovery from a data directory.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("read {dir}: {source}")]
    Read { dir: String, source: std::io::Error },
    #[error("no metadata members found under {0} (is `fabricd dev --nodes N` running?)")]
    Empty(String),
}

/// The endpoints of the members whose directories are under `data_dir` (`node-*/node.json`).
pub fn discover(data_dir: &Path) -> Result<Vec<NodeFile>, DiscoveryError> {
    let read_err = |source| DiscoveryError::Read {
        dir: data_dir.display().to_string(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(data_dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path().join(NODE_FILE);
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(node) = serde_json::from_slice::<NodeFile>(&bytes)
        {
            found.push(node);
        }
    }
    if found.is_empty() {
        return Err(DiscoveryError::Empty(data_dir.display().to_string()));
    }
    found.sort_by_key(|n| n.id);
    Ok(found)
}

/// A client of the metadata service.
pub struct Client {
    endpoints: Vec<String>,
    channels: PeerChannels,
    current: AtomicUsize,
    /// The leader's address, as last found (for [`Client::call_leader`]).
    leader: std::sync::Mutex<Option<String>>,
    pub retry_deadline: Duration,
    /// How long one attempt may take before the call moves on to the next member. A member
    /// cut off by a partition that drops packets does not refuse the connection, so this is
    /// also how long such a member holds a call up.
    pub attempt_deadline: Duration,
}

fn retriable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown
    )
}

impl Client {
    /// A client of the members at `endpoints`, dialling them over `transport`.
    pub fn new(endpoints: Vec<String>, transport: Transport) -> Client {
        assert!(
            !endpoints.is_empty(),
            "a client needs at least one endpoint"
        );
        Client {
            endpoints,
            channels: PeerChannels::new(transport),
            current: AtomicUsize::new(0),
            leader: std::sync::Mutex::new(None),
            retry_deadline: Duration::from_millis(CALL_RETRY_DEADLINE_MS),
            attempt_deadline: Duration::from_millis(ATTEMPT_DEADLINE_MS),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A client of one endpoint, with raised message limits.
    pub fn endpoint(&self, addr: &str) -> Result<MetadataClient<Channel>, Status> {
        let ch = self
            .channels
            .channel(addr)
            .map_err(|e| Status::invalid_argument(format!("endpoint {addr}: {e}")))?;
        Ok(MetadataClient::new(ch)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }

    /// Runs `call` against a member, moving to the next member and retrying on errors that
    /// mean "not now / not here", until [`Client::retry_deadline`].
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(MetadataClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        loop {
            let seen = self.current.load(Ordering::Relaxed);
            let i = seen % self.endpoints.len();
            let client = self.endpoint(&self.endpoints[i])?;
            let attempt = tokio::time::timeout(self.attempt_deadline, call(client)).await;
            let status = match attempt {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded(format!(
                    "no answer from {} within {} ms",
                    self.endpoints[i],
                    self.attempt_deadline.as_millis()
                )),
            };
            if !retriable(&status) || started.elapsed() >= self.retry_deadline {
                return Err(status);
            }
            // Move on to the next member, unless a concurrent call already has.
            let next = (i + 1) % self.endpoints.len();
            let _ = self
                .current
                .compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
        }
    }

    /// Runs `call` against the leader itself (found through the members, and again whenever
    /// it fails in a way that means "not now / not here"), for the calls only the leader
    /// answers. The endpoints may name a single member.
    pub async fn call_leader<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(MetadataClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        loop {
            let known = self.leader.lock().expect("leader").clone();
            let addr = match known {
                Some(a) => a,
                None => {
                    let a = self.leader_status().await?.rpc_addr;
                    *self.leader.lock().expect("leader") = Some(a.clone());
                    a
                }
            };
            let attempt =
                tokio::time::timeout(self.attempt_deadline, call(self.endpoint(&addr)?)).await;
            let status = match attempt {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded(format!(
                    "no answer from {addr} within {} ms",
                    self.attempt_deadline.as_millis()
                )),
            };
            if !retriable(&status) || started.elapsed() >= self.retry_deadline {
                return Err(status);
            }
            *self.leader.lock().expect("leader") = None;
            tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
        }
    }

    /// The status of the member at `addr` (no retries: a down member is an answer).
    pub async fn status_of(&self, addr: &str) -> Result<pb::NodeStatus, Status> {
        let mut c = self.endpoint(addr)?;
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(Duration::from_millis(ATTEMPT_DEADLINE_MS / 4));
        Ok(c.status(req).await?.into_inner())
    }

    /// Creates a volume; retries reuse one request id, so the create happens at most once.
    pub async fn create_volume(
        &self,
        mut req: pb::CreateVolumeRequest,
    ) -> Result<pb::Volume, Status> {
        if req.request_id.is_empty() {
            req.request_id = new_request_id();
        }
        self.call(|mut c| {
            let req = req.clone();
            async move { c.create_volume(req).await }
        })
        .await
    }

    /// The status of the member that currently leads, found by asking the members in turn.
    pub async fn leader_status(&self) -> Result<pb::NodeStatus, Status> {
        let started = Instant::now();
        loop {
            for addr in &self.endpoints {
                let Ok(s) = self.status_of(addr).await else {
                    continue;
                };
                if s.role == "leader" {
                    return Ok(s);
                }
                if let Some(m) = s.members.iter().find(|m| m.id == s.leader_id)
                    && let Ok(l) = self.status_of(&m.rpc_addr).await
                    && l.role == "leader"
                {
                    return Ok(l);
                }
            }
            if started.elapsed() >= self.retry_deadline {
                return Err(Status::unavailable("no leader found"));
            }
            tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS * 3)).await;
        }
    }

    /// Adds member `id` at `rpc_addr` as a learner, waits for it to catch up, then makes it a voter.
    pub async fn join(&self, id: u64, rpc_addr: &str) -> Result<(), Status> {
        let leader = self.leader_status().await?;
        let mut c = self.endpoint(&leader.rpc_addr)?;
        c.add_learner(pb::AddLearnerRequest {
            id,
            rpc_addr: rpc_addr.to_string(),
        })
        .await?;
        let mut voters: Vec<u64> = leader
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        voters.push(id);
        c.change_voters(pb::ChangeVotersRequest { voters }).await?;
        Ok(())
    }
}

impl Client {
    /// Adds member `id` at `rpc_addr` as a learner; returns once it has caught up.
    pub async fn add_learner(
        &self,
        id: u64,
        rpc_addr: &str,
    ) -> Result<pb::MembershipReply, Status> {
        let req = pb::AddLearnerRequest {
            id,
            rpc_addr: rpc_addr.to_string(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.add_learner(req).await }
        })
        .await
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, id: u64) -> Result<pb::MembershipReply, Status> {
        let leader = self.leader_status().await?;
        if !leader.members.iter().any(|m| m.id == id) {
            return Err(Status::not_found(format!(
                "member {id} not found (add it as a learner first)"
            )));
        }
        self.set_voters(&leader, |voters| {
            voters.insert(id);
        })
        .await
    }

    /// Removes member `id` from the group (voter or learner).
    pub async fn remove_member(&self, id: u64) -> Result<pb::MembershipReply, Status> {
        let leader = self.leader_status().await?;
        if !leader.members.iter().any(|m| m.id == id) {
            return Err(Status::not_found(format!("member {id} not found")));
        }
        let voters: Vec<u64> = leader
            .members
            .iter()
            .filter(|m| m.voter && m.id != id)
            .map(|m| m.id)
            .collect();
        if voters.is_empty() {
            return Err(Status::failed_precondition(format!(
                "member {id} is the last voter"
            )));
        }
        self.set_voters(&leader, |v| {
            v.remove(&id);
        })
        .await
    }

    /// Replaces the voter set with `edit(current voters)`; members dropped from it leave.
    async fn set_voters(
        &self,
        leader: &pb::NodeStatus,
        edit: impl FnOnce(&mut std::collections::BTreeSet<u64>),
    ) -> Result<pb::MembershipReply, Status> {
        let mut voters: std::collections::BTreeSet<u64> = leader
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        edit(&mut voters);
        let req = pb::ChangeVotersRequest {
            voters: voters.into_iter().collect(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.change_voters(req).await }
        })
        .await
    }
}

/// A request id unique across processes and calls: process id, time, and a counter.
pub fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
