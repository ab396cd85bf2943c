//! Reads of the cluster state: a [`Query`] evaluated against the applied state, purely.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::balance::{self, Budget, Plan};
use super::command::CommandError;
use super::model::{NodeId, NodeRecord, Pool, Volume};
use super::state::ClusterState;

/// A read of the cluster state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    Nodes,
    Pools,
    Volumes,
    Volume(String),
    /// Everything a driver needs to serve the volume, at one applied index.
    VolumeMap(String),
    /// What the balancer would move in a pool within a budget.
    BalancePlan {
        pool: String,
        moves_max: usize,
        bytes_max: u64,
    },
}

/// A volume with its pool (and PG map) and the nodes that map names, all read at one applied
/// index: no remap can fall between the map and the volume's stale lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMap {
    pub applied_index: u64,
    pub volume: Volume,
    pub pool: Pool,
    pub nodes: Vec<NodeRecord>,
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum QueryReply {
    Nodes(Vec<NodeRecord>),
    Pools(Vec<Pool>),
    Volumes(Vec<Volume>),
    Volume(Option<Volume>),
    VolumeMap(Option<Box<VolumeMap>>),
    BalancePlan(Result<Plan, CommandError>),
}

/// Evaluates `query` against `state`, which has applied the log up to `applied_index`.
pub fn evaluate(state: &ClusterState, applied_index: u64, query: &Query) -> QueryReply {
    match query {
        Query::VolumeMap(name) => QueryReply::VolumeMap(volume_map(state, applied_index, name)),
        Query::Nodes => QueryReply::Nodes(state.nodes.values().cloned().collect()),
        Query::Pools => QueryReply::Pools(state.pools.values().cloned().collect()),
        Query::Volumes => QueryReply::Volumes(state.volumes.values().cloned().collect()),
        Query::Volume(name) => QueryReply::Volume(state.volumes.get(name).cloned()),
        Query::BalancePlan {
            pool,
            moves_max,
            bytes_max,
        } => QueryReply::BalancePlan(balance::plan(
            state,
            pool,
            Budget {
                moves_max: *moves_max,
                bytes_max: *bytes_max,
            },
        )),
    }
}

fn volume_map(state: &ClusterState, applied_index: u64, name: &str) -> Option<Box<VolumeMap>> {
    let volume = state.volumes.get(name)?;
    let pool = state.pools.get(&volume.spec.pool)?;
    let named: BTreeSet<NodeId> = pool.map.pgs.iter().flatten().copied().collect();
    let nodes = named
        .iter()
        .filter_map(|id| state.nodes.get(id).cloned())
        .collect();
    Some(Box::new(VolumeMap {
        applied_index,
        volume: volume.clone(),
        pool: pool.clone(),
        nodes,
    }))
}
