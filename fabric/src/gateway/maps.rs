//! Following the PG maps: the watch stream's pool epochs wake every volume, which reads its
//! map again and follows it. The same read carries the volume's size, which a resize raises:
//! the volume takes it once its replicas hold it.

use std::collections::BTreeMap;
use std::sync::Arc;

use proto::meta as pb;
use volume::client::Growth;
use volume::volume::BlockVolume;

use super::attach::{Attached, VolumeMap};
use crate::meta::client::Client;

/// Follows the metadata service's watch stream (pools only) for as long as the gateway runs,
/// and signals `moved` whenever a pool's PG map epoch changes, so that every volume follows
/// the new map at once rather than at its next poll.
pub(super) async fn watch_maps(client: Arc<Client>, moved: tokio::sync::watch::Sender<()>) {
    let request = pb::WatchRequest {
        exclude_nodes: true,
        exclude_volumes: true,
        ..pb::WatchRequest::default()
    };
    let mut follower = PoolEpochs {
        epoch: 0,
        seen: BTreeMap::new(),
        moved,
    };
    // The gateway stops by ending its runtime; this subscription never stops by itself.
    let (_keep, never) = tokio::sync::watch::channel(false);
    crate::meta::watcher::follow(&client, request, &mut follower, never).await;
}

/// The PG map epoch of every pool, as the watch stream brings them.
pub(super) struct PoolEpochs {
    epoch: u64,
    seen: BTreeMap<String, u64>,
    moved: tokio::sync::watch::Sender<()>,
}

impl crate::meta::watcher::Follower for PoolEpochs {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn apply(&mut self, event: pb::WatchEvent) -> bool {
        if !event.full && event.base_epoch != self.epoch {
            return false;
        }
        let before = self.seen.clone();
        if event.full {
            self.seen.clear();
        }
        for p in event.pools {
            self.seen.insert(p.name, p.map_epoch);
        }
        for name in event.removed_pools {
            self.seen.remove(&name);
        }
        self.epoch = event.cluster_epoch;
        if self.seen != before {
            tracing::debug!(epochs = ?self.seen, "PG map epochs moved");
            self.moved.send_replace(());
        }
        true
    }
}

/// Reads the volume's PG map and stale replicas, the pool's map and the nodes' addresses again,
/// and has `volume` follow them: replicas re-placed onto new nodes join as stale (to be
/// rebuilt), and replicas of nodes taken out leave. Then follows the volume's size.
pub(super) async fn follow_map(attached: &Attached, client: &Client) -> anyhow::Result<()> {
    let map = VolumeMap::fetch(client, &attached.name).await?;
    let (acting, addresses) = map.acting_sets()?;
    *attached.node_of.write().expect("node addresses") = addresses;
    attached
        .volume
        .follow(&acting)
        .map_err(|e| anyhow::anyhow!("follow the PG map: {e}"))?;
    follow_size(attached, map.size_bytes()).await
}

/// Grows the volume to `size_bytes`, the size the cluster records, once every live replica
/// holds it (their storage agents grow them as they see the record); until then the next
/// call tries again. The NBD connections opened from then on see the new size.
async fn follow_size(attached: &Attached, size_bytes: u64) -> anyhow::Result<()> {
    if size_bytes <= attached.volume.size() {
        // The metadata service refuses shrinking, and a lagging member's record is older.
        return Ok(());
    }
    match attached.volume.grow(size_bytes).await {
        Ok(Growth::Grown) => Ok(()),
        Ok(Growth::Waiting { replica }) => {
            tracing::debug!(volume = %attached.name, size_bytes, %replica, "resized: waiting for the replica's node to grow it");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("grow to {size_bytes} bytes: {e}")),
    }
}
