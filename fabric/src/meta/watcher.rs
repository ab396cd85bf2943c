//! Following `Watch` from the client side: a subscription that survives member failures and
//! resumes from the last epoch it applied, and [`ClusterView`], a local copy of the records
//! kept current by the events.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::meta as pb;
use tokio::sync::watch;

use super::client::Client;

/// Pause before a subscription is opened again after its stream ended.
pub const WATCH_RETRY_MS: u64 = 500;

/// What a subscriber does with the events.
pub trait Follower {
    /// The cluster epoch it has (0: nothing yet).
    fn epoch(&self) -> u64;
    /// Applies one event; false if it does not fit (a delta from another epoch than the one
    /// it has), which makes the subscription start over from the full state.
    fn apply(&mut self, event: pb::WatchEvent) -> bool;
}

/// Follows the cluster through `client` with `request` (its `since_epoch` is set from the
/// follower) until `stop`, reconnecting through any member when a stream ends.
pub async fn follow<F: Follower>(
    client: &Client,
    request: pb::WatchRequest,
    follower: &mut F,
    mut stop: watch::Receiver<bool>,
) {
    let mut start_over = false;
    loop {
        let req = pb::WatchRequest {
            since_epoch: if start_over { 0 } else { follower.epoch() },
            ..request.clone()
        };
        start_over = false;
        let opened = tokio::select! {
            opened = client.call(|mut c| {
                let req = req.clone();
                async move { c.watch(req).await }
            }) => opened,
            _ = stop.wait_for(|s| *s) => return,
        };
        match opened {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    next = stream.message() => next,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match next {
                    Ok(Some(event)) => {
                        if !follower.apply(event) {
                            tracing::info!("watch event does not fit; starting over");
                            start_over = true;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "watch stream ended");
                        break;
                    }
                }
            },
            Err(status) => tracing::debug!(%status, "watch stream not opened"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(WATCH_RETRY_MS)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The cluster's records as the events brought them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    pub epoch: u64,
    pub nodes: BTreeMap<u64, pb::Node>,
    /// Pools with their whole PG maps (deltas are merged in by PG).
    pub pools: BTreeMap<String, pb::Pool>,
    pub volumes: BTreeMap<String, pb::Volume>,
    /// Every volume id below it was assigned (and, if not in `volumes`, deleted).
    pub next_volume_id: u64,
}

impl Follower for ClusterView {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn apply(&mut self, event: pb::WatchEvent) -> bool {
        if !event.full && event.base_epoch != self.epoch {
            return false;
        }
        if event.full {
            self.nodes.clear();
            self.pools.clear();
            self.volumes.clear();
        }
        for node in event.nodes {
            self.nodes.insert(node.id, node);
        }
        for pool in event.pool_records {
            match self.pools.get_mut(&pool.name) {
                Some(have) if have.pg_count == pool.pg_count => {
                    merge_pgs(have, pool);
                }
                _ => {
                    self.pools.insert(pool.name.clone(), pool);
                }
            }
        }
        for volume in event.volume_records {
            self.volumes.insert(volume.name.clone(), volume);
        }
        for id in event.removed_nodes {
            self.nodes.remove(&id);
        }
        for name in event.removed_pools {
            self.pools.remove(&name);
        }
        for name in event.removed_volumes {
            self.volumes.remove(&name);
        }
        self.epoch = event.cluster_epoch;
        self.next_volume_id = event.next_volume_id;
        true
    }
}

/// Takes `update`'s fields and changed PG entries into `have`.
fn merge_pgs(have: &mut pb::Pool, update: pb::Pool) {
    let pb::Pool {
        name: _,
        rule,
        pg_count: _,
        map_epoch,
        pgs,
        cluster_map_epoch,
    } = update;
    have.rule = rule;
    have.map_epoch = map_epoch;
    have.cluster_map_epoch = cluster_map_epoch;
    for pg in pgs {
        match have.pgs.get_mut(pg.pg as usize) {
            Some(slot) if slot.pg == pg.pg => *slot = pg,
            _ => {
                have.pgs.push(pg);
                have.pgs.sort_by_key(|p| p.pg);
            }
        }
    }
}
