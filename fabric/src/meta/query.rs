//! Reads of the cluster state: a [`Query`] evaluated against the applied state, purely.

use serde::{Deserialize, Serialize};

use super::model::{NodeRecord, Pool, Volume};
use super::state::ClusterState;

/// A read of the cluster state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    Nodes,
    Pools,
    Volumes,
    Volume(String),
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryReply {
    Nodes(Vec<NodeRecord>),
    Pools(Vec<Pool>),
    Volumes(Vec<Volume>),
    Volume(Option<Volume>),
}

/// Evaluates `query` against `state`.
pub fn evaluate(state: &ClusterState, query: &Query) -> QueryReply {
    match query {
        Query::Nodes => QueryReply::Nodes(state.nodes.values().cloned().collect()),
        Query::Pools => QueryReply::Pools(state.pools.values().cloned().collect()),
        Query::Volumes => QueryReply::Volumes(state.volumes.values().cloned().collect()),
        Query::Volume(name) => QueryReply::Volume(state.volumes.get(name).cloned()),
    }
}
