//! openraft's network over gRPC: one cached tonic channel per peer address, per-RPC deadlines
//! from openraft's `RPCOption`, snapshots streamed in chunks under a size-based deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use proto::raft::raft_service_client::RaftServiceClient;
use proto::raft::{RaftPayload, SnapshotChunk};
use tonic::transport::{Channel, Endpoint};

use super::secure;
use super::{CONNECT_TIMEOUT_MS, MESSAGE_BYTES_MAX, SNAPSHOT_CHUNK_BYTES, snapshot_deadline};
use crate::identity::Transport;
use crate::meta::types::{MemberNode, Snapshot, SnapshotData, TypeConfig, Vote};

/// One lazily connected channel per peer address, shared by everything that talks to peers,
/// each dialled over the process's [`Transport`].
#[derive(Clone)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    transport: Transport,
}

impl PeerChannels {
    pub fn new(transport: Transport) -> PeerChannels {
        PeerChannels {
            channels: Arc::default(),
            transport,
        }
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The channel to `addr` (`host:port`), created on first use and reused after.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().expect("peer channel cache");
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        // The connector does TLS itself (see `secure`), so tonic sees a plain http URI.
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .connect_with_connector_lazy(secure::connector(self.transport.clone()));
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// A Raft transport client for `addr` with raised message limits.
    pub fn raft_client(
        &self,
        addr: &str,
    ) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
        Ok(RaftServiceClient::new(self.channel(addr)?)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }
}

/// Creates a [`PeerClient`] per replication stream; all of them share [`PeerChannels`].
#[derive(Clone)]
pub struct NetworkFactory {
    pub channels: PeerChannels,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.rpc_addr.clone(),
            channels: self.channels.clone(),
        }
    }
}

/// The network to one peer.
pub struct PeerClient {
    target: u64,
    addr: String,
    channels: PeerChannels,
}

fn unreachable_err(e: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::from_string(e.to_string())
}

impl PeerClient {
    fn client(&self) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig>> {
        self.channels.raft_client(&self.addr).map_err(|e| {
            RPCError::Unreachable(unreachable_err(format!(
                "peer {} at {}: {e}",
                self.target, self.addr
            )))
        })
    }

    /// Sends one serialized request through `call` and decodes the serialized
    /// `Result<Resp, RaftError>` reply.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let data = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let reply = call(self.client()?, request)
            .await
            .map_err(|s| status_to_rpc_error(self.target, s))?;
        let decoded: Result<Resp, String> = serde_json::from_slice(&reply.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|remote| {
            RPCError::Unreachable(unreachable_err(format!("peer {}: {remote}", self.target)))
        })
    }
}

fn status_to_rpc_error(target: u64, s: tonic::Status) -> RPCError<TypeConfig> {
    let msg = format!("peer {target}: {}: {}", s.code(), s.message());
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
            RPCError::Unreachable(unreachable_err(msg))
        }
        _ => RPCError::Network(NetworkError::from_string(msg)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = serde_json::to_vec(&(vote, snapshot.meta))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let data = snapshot.snapshot;
        let deadline = snapshot_deadline(data.len());
        let mut chunks = vec![SnapshotChunk {
            header,
            data: Vec::new(),
        }];
        chunks.extend(data.chunks(SNAPSHOT_CHUNK_BYTES).map(|c| SnapshotChunk {
            header: Vec::new(),
            data: c.to_vec(),
        }));
        let mut request = tonic::Request::new(futures::stream::iter(chunks));
        request.set_timeout(deadline);
        let mut client = self
            .channels
            .raft_client(&self.addr)
            .map_err(|e| StreamingError::Unreachable(unreachable_err(e)))?;
        let target = self.target;
        let send = async move {
            let reply = tokio::time::timeout(deadline, client.install_snapshot(request))
                .await
                .map_err(|_| {
                    StreamingError::Network(NetworkError::from_string(format!(
                        "peer {target}: snapshot not installed within {deadline:?}"
                    )))
                })?
                .map_err(|s| match status_to_rpc_error(target, s) {
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    other => StreamingError::Network(NetworkError::from_string(other.to_string())),
                })?;
            let decoded: Result<SnapshotResponse<TypeConfig>, String> =
                serde_json::from_slice(&reply.into_inner().data)
                    .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
            decoded.map_err(|remote| {
                StreamingError::Unreachable(unreachable_err(format!("peer {target}: {remote}")))
            })
        };
        tokio::select! {
            r = send => r,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}
