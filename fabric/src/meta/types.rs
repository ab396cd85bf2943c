//! The Raft type configuration of the metadata group: what a log entry carries ([`Command`]),
//! what applying it returns ([`Outcome`]), and how a member is addressed ([`MemberNode`]).

use serde::{Deserialize, Serialize};

use super::command::{Command, Outcome};

/// How to reach a Raft member: the address of its gRPC server (Raft transport and metadata API).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberNode {
    pub rpc_addr: String,
}

impl std::fmt::Display for MemberNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.rpc_addr)
    }
}

openraft::declare_raft_types!(
    /// Raft types of the metadata group.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = MemberNode,
);

/// A snapshot's bytes: the encoded [`super::store::SnapshotPayload`].
pub type SnapshotData = Vec<u8>;

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type Raft = openraft::Raft<TypeConfig, super::store::StateMachineStore>;
