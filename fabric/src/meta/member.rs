//! One running member of the metadata group: the Raft handle, the state machine, and the two
//! entry points the services use — [`Member::write`] (one command through the log) and
//! [`Member::read`] (a linearizable query) — which run on the leader, forwarding one hop from a
//! follower.

use std::time::Duration;

use openraft::ReadPolicy;

use sha2::Digest;

use super::command::{Applied, Command, CommandError, CommandV1};
use super::net::client::PeerChannels;
use super::net::forward::{ForwardReply, ForwardRequest};
use super::net::{FORWARD_DEADLINE_MS, MESSAGE_BYTES_MAX};
use super::query::{Query, QueryReply, evaluate};
use super::store::StateMachineStore;
use super::types::Raft;
use crate::audit::entry::AuditCall;
use crate::audit::merkle::Hash;

/// How long a write may wait to be committed and applied before the caller is told to retry.
pub const WRITE_DEADLINE_MS: u64 = 10_000;
/// How long a linearizable read may wait for the leader to confirm its leadership.
pub const READ_DEADLINE_MS: u64 = 10_000;
/// How long a member waits to apply the log up to an index it was told of.
pub const APPLY_WAIT_MS: u64 = 5_000;

/// Why a write or read did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// No leader could take the request now; retrying later (or elsewhere) may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// A running member.
pub struct Member {
    pub id: u64,
    pub rpc_addr: String,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub peers: PeerChannels,
    /// Calls this member refused because the audit log was full.
    pub audit_refused_full: std::sync::atomic::AtomicU64,
    /// How many refusals each principal may have written (see `refusals`).
    pub refusals: super::refusals::Limiter,
    /// Refused calls counted rather than written one by one.
    pub audit_refusals_counted: std::sync::atomic::AtomicU64,
}

impl Member {
    /// A copy of this member's current Raft metrics (role, leader, log progress, membership).
    pub fn metrics(&self) -> openraft::RaftMetrics<super::types::TypeConfig> {
        use openraft::async_runtime::watch::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    /// The current term, if this member leads in it. Cheap: nothing is copied.
    pub fn leading_term(&self) -> Option<u64> {
        use openraft::async_runtime::watch::WatchReceiver;
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        (m.current_leader == Some(self.id)).then_some(m.current_term)
    }

    /// The gRPC address of the member this one believes leads, if any.
    pub fn leader_addr(&self) -> Option<String> {
        use openraft::async_runtime::watch::WatchReceiver;
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let leader = m.current_leader?;
        let membership = m.membership_config.membership();
        membership.get_node(&leader).map(|n| n.rpc_addr.clone())
    }

    /// Proposes `command` and returns what applying it produced and its log index.
    /// Writes `command` as this member's own action (the failure detector, key making, the
    /// bootstrap policy, a join): audited under the principal `member/ID`, `verb` on `target`.
    pub async fn write_own(
        &self,
        verb: &str,
        target: String,
        command: CommandV1,
    ) -> Result<(Applied, u64), MetaError> {
        let digest = sha2::Sha256::digest(serde_json::to_vec(&command).unwrap_or_default());
        let call = AuditCall {
            time_ms: super::clock::unix_ms(),
            principal: format!("member/{}", self.id),
            verb: verb.to_owned(),
            target,
            request_sha256: Hash(digest.into()),
            peer: String::new(),
        };
        self.write(
            CommandV1::Audited {
                call,
                command: Box::new(command),
            }
            .into(),
        )
        .await
    }

    pub async fn write(&self, command: Command) -> Result<(Applied, u64), MetaError> {
        let reply = self.write_local(command.clone()).await;
        let reply = self
            .forward_if_follower(reply, ForwardRequest::Write(command))
            .await?;
        match reply {
            ForwardReply::Written { outcome, log_index } => Ok((outcome?, log_index)),
            other => Err(MetaError::Unavailable(format!(
                "unexpected reply to a write: {other:?}"
            ))),
        }
    }

    /// Returns once this member's state machine has applied the log up to `index` (the index
    /// of a write, or of a read done on the leader), so that its own state can be read.
    pub async fn applied_at_least(&self, index: u64) -> Result<(), MetaError> {
        self.raft
            .wait(Some(Duration::from_millis(APPLY_WAIT_MS)))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(|_| ())
            .map_err(|e| MetaError::Unavailable(format!("apply up to {index}: {e}")))
    }

    /// Answers `query` from state that includes every write acknowledged before the call.
    pub async fn read(&self, query: Query) -> Result<QueryReply, MetaError> {
        let reply = self.read_local(&query).await;
        match self
            .forward_if_follower(reply, ForwardRequest::Read(query))
            .await?
        {
            ForwardReply::Read(r) => Ok(r),
            other => Err(MetaError::Unavailable(format!(
                "unexpected reply to a read: {other:?}"
            ))),
        }
    }

    async fn forward_if_follower(
        &self,
        reply: ForwardReply,
        request: ForwardRequest,
    ) -> Result<ForwardReply, MetaError> {
        match reply {
            ForwardReply::NotLeader {
                leader: Some((id, addr)),
            } if id != self.id => {
                let reply = self.forward(&addr, &request).await?;
                match reply {
                    ForwardReply::NotLeader { .. } => Err(MetaError::Unavailable(format!(
                        "leader changed while forwarding to {id}"
                    ))),
                    ForwardReply::Unavailable(m) => Err(MetaError::Unavailable(m)),
                    other => Ok(other),
                }
            }
            ForwardReply::NotLeader { .. } => {
                Err(MetaError::Unavailable("no leader elected yet".into()))
            }
            ForwardReply::Unavailable(m) => Err(MetaError::Unavailable(m)),
            other => Ok(other),
        }
    }

    async fn forward(
        &self,
        addr: &str,
        request: &ForwardRequest,
    ) -> Result<ForwardReply, MetaError> {
        let unavailable =
            |e: String| MetaError::Unavailable(format!("forward to leader at {addr}: {e}"));
        let mut client = self
            .peers
            .raft_client(addr)
            .map_err(|e| unavailable(e.to_string()))?
            .max_decoding_message_size(MESSAGE_BYTES_MAX);
        let data = serde_json::to_vec(request).map_err(|e| unavailable(e.to_string()))?;
        let mut req = tonic::Request::new(proto::raft::RaftPayload { data });
        req.set_timeout(Duration::from_millis(FORWARD_DEADLINE_MS));
        let reply = client
            .forward(req)
            .await
            .map_err(|s| unavailable(s.message().to_string()))?;
        serde_json::from_slice(&reply.into_inner().data).map_err(|e| unavailable(e.to_string()))
    }

    /// Proposes `command` on this member, which must be the leader. Never forwards.
    pub async fn write_local(&self, command: Command) -> ForwardReply {
        let write = self.raft.client_write(command);
        match tokio::time::timeout(Duration::from_millis(WRITE_DEADLINE_MS), write).await {
            Err(_) => {
                ForwardReply::Unavailable(format!("not committed within {WRITE_DEADLINE_MS} ms"))
            }
            Ok(Ok(resp)) => ForwardReply::Written {
                outcome: resp.data,
                log_index: resp.log_id.index(),
            },
            Ok(Err(e)) => not_leader_or_unavailable(e.forward_to_leader(), &e),
        }
    }

    /// Answers `query` on this member after confirming leadership (read index). Never forwards.
    pub async fn read_local(&self, query: &Query) -> ForwardReply {
        let confirm = self.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        match tokio::time::timeout(Duration::from_millis(READ_DEADLINE_MS), confirm).await {
            Err(_) => ForwardReply::Unavailable(format!(
                "leadership not confirmed within {READ_DEADLINE_MS} ms"
            )),
            Ok(Ok(_)) => ForwardReply::Read(
                self.sm
                    .read(|state, applied| evaluate(state, applied, query)),
            ),
            Ok(Err(e)) => not_leader_or_unavailable(e.forward_to_leader(), &e),
        }
    }
}

/// The reply to a request this member could not serve: where the leader is, if the error says,
/// or the error itself.
fn not_leader_or_unavailable(
    forward: Option<&openraft::error::ForwardToLeader<super::types::TypeConfig>>,
    error: &dyn std::fmt::Display,
) -> ForwardReply {
    match forward {
        Some(f) => ForwardReply::NotLeader {
            leader: f
                .leader_id
                .zip(f.leader_node.as_ref())
                .map(|(id, node)| (id, node.rpc_addr.clone())),
        },
        None => ForwardReply::Unavailable(error.to_string()),
    }
}
