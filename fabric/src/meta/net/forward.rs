//! What a follower sends its leader when a client asked it for a write or a linearizable read,
//! and what comes back. One hop only: a member that is not the leader answers `NotLeader`
//! instead of forwarding again.

use serde::{Deserialize, Serialize};

use crate::meta::command::{Command, Outcome};
use crate::meta::query::{Query, QueryReply};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardRequest {
    Write(Command),
    Read(Query),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    Written {
        outcome: Outcome,
        log_index: u64,
    },
    Read(QueryReply),
    /// The receiver is not the leader; the leader it knows of, if any.
    NotLeader {
        leader: Option<(u64, String)>,
    },
    /// The receiver could not serve the request now (no quorum, shutting down, ...).
    Unavailable(String),
}
