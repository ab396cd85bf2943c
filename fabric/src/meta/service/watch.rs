//! The `Watch` stream: the cluster state once, then deltas.
//!
//! A subscriber's stream remembers the cluster epoch it last sent. When the state machine
//! applies a change, the next event carries the records the journal says changed since then,
//! read from the state as it is now (so one event can cover several epochs: a slow reader is
//! never queued behind a backlog). A subscriber that is further behind than the journal, or
//! that starts from nothing, gets the full state.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::Stream;
use proto::meta as pb;
use tonic::Status;

use super::convert::pool_out;
use tokio::sync::watch;

use crate::meta::changes::{Changed, Kind};
use crate::meta::model::{Pool, Volume};
use crate::meta::state::ClusterState;
use crate::meta::store::StateMachineStore;

/// Which records a subscriber follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub nodes: bool,
    pub pools: bool,
    pub volumes: bool,
    /// Only the volumes of these names (every volume for `None`).
    pub names: Option<Arc<BTreeSet<String>>>,
}

/// Most volume names one subscription may follow by name.
pub const WATCH_NAMES_MAX: usize = 4096;

impl Filter {
    pub const ALL: Filter = Filter {
        nodes: true,
        pools: true,
        volumes: true,
        names: None,
    };

    /// Whether the subscriber follows volume `name`.
    fn wants(&self, name: &str) -> bool {
        self.volumes && self.names.as_ref().is_none_or(|n| n.contains(name))
    }

    fn follows(&self, kind: Kind) -> bool {
        match kind {
            Kind::Nodes => self.nodes,
            Kind::Pools => self.pools,
            Kind::Volumes => self.volumes,
        }
    }

    fn keep(&self, changed: &mut Changed) {
        if !self.nodes {
            changed.nodes.clear();
        }
        if !self.pools {
            changed.pools.clear();
        }
        changed.volumes.retain(|name| self.wants(name));
    }
}

/// The events of one subscriber that has the state of `since_epoch` (0: nothing). It wakes
/// only when a kind of record it follows changed.
pub fn stream(
    sm: StateMachineStore,
    since_epoch: u64,
    filter: Filter,
) -> impl Stream<Item = Result<pb::WatchEvent, Status>> + Send + 'static {
    let followed: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| filter.follows(*k))
        .collect();
    let changes: Vec<watch::Receiver<u64>> = followed.iter().map(|k| sm.subscribe(*k)).collect();
    let have = (since_epoch > 0).then_some(since_epoch);
    futures::stream::unfold((sm, changes, have), move |(sm, mut changes, mut have)| {
        let filter = filter.clone();
        async move {
            loop {
                // Marked seen before the read: a change applied after it wakes the wait below.
                for c in &mut changes {
                    c.borrow_and_update();
                }
                let (event, now) = sm.read(|state, applied| {
                    (event(state, applied, have, &filter), state.cluster_epoch)
                });
                have = Some(now);
                if let Some(event) = event {
                    return Some((Ok(event), (sm, changes, have)));
                }
                if changes.is_empty() {
                    futures::future::pending::<()>().await;
                }
                let waits = changes.iter_mut().map(|c| Box::pin(c.changed()));
                let (woke, _, _) = futures::future::select_all(waits).await;
                if woke.is_err() {
                    return None;
                }
            }
        }
    })
}

/// The event that brings a subscriber at `have` to `state`, for the records `filter` keeps;
/// none if nothing it follows changed.
pub fn event(
    state: &ClusterState,
    applied_index: u64,
    have: Option<u64>,
    filter: &Filter,
) -> Option<pb::WatchEvent> {
    if have == Some(state.cluster_epoch) {
        return None;
    }
    let delta = have.and_then(|h| {
        let mut changed = state.journal.since(h)?;
        filter.keep(&mut changed);
        Some((h, changed))
    });
    if let Some((_, changed)) = &delta
        && changed.nodes.is_empty()
        && changed.pools.is_empty()
        && changed.volumes.is_empty()
    {
        return None;
    }
    let mut event = pb::WatchEvent {
        applied_index,
        cluster_epoch: state.cluster_epoch,
        full: delta.is_none(),
        base_epoch: delta.as_ref().map_or(0, |(h, _)| *h),
        // The state counts the last id it gave out.
        next_volume_id: state.next_volume_id + 1,
        ..pb::WatchEvent::default()
    };
    match delta {
        None => {
            if filter.nodes {
                event.nodes = state.nodes.values().map(pb::Node::from).collect();
            }
            for pool in state.pools.values().filter(|_| filter.pools) {
                push_pool(&mut event, pool, None);
            }
            for volume in state
                .volumes
                .values()
                .filter(|v| filter.wants(&v.spec.name))
            {
                push_volume(&mut event, volume);
            }
        }
        Some((_, changed)) => fill_delta(&mut event, state, &changed),
    }
    Some(event)
}

fn fill_delta(event: &mut pb::WatchEvent, state: &ClusterState, changed: &Changed) {
    for id in &changed.nodes {
        match state.nodes.get(id) {
            Some(node) => event.nodes.push(pb::Node::from(node)),
            None => event.removed_nodes.push(*id),
        }
    }
    for (name, pgs) in &changed.pools {
        match state.pools.get(name) {
            Some(pool) => push_pool(event, pool, pgs.as_ref()),
            None => event.removed_pools.push(name.clone()),
        }
    }
    for name in &changed.volumes {
        match state.volumes.get(name) {
            Some(volume) => push_volume(event, volume),
            None => event.removed_volumes.push(name.clone()),
        }
    }
}

/// Adds `pool` with the PG entries in `pgs` (all of them for `None`).
fn push_pool(event: &mut pb::WatchEvent, pool: &Pool, pgs: Option<&BTreeSet<u32>>) {
    let record = pool_out(pool, pgs);
    event.pools.push(pb::PoolEpoch {
        name: record.name.clone(),
        map_epoch: record.map_epoch,
    });
    event.pool_records.push(record);
}

fn push_volume(event: &mut pb::WatchEvent, volume: &Volume) {
    event.volumes.push(pb::VolumeEpoch {
        name: volume.spec.name.clone(),
        attach_epoch: volume.attach_epoch,
    });
    event.volume_records.push(pb::Volume::from(volume));
}
