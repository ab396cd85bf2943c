//! Following the PG maps and the volumes' records: the watch stream (pools, and the records
//! of the volumes this gateway serves) stamps what moved, and a volume whose pool's map or
//! whose own record moved reads its map again and follows it. The same read carries the
//! volume's QoS, taken at once, its scrub record (for its scrubs), and its size, which a
//! resize raises: the volume takes it once its replicas hold it.
//! Nothing is read while nothing moves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proto::meta as pb;
use volume::client::Growth;
use volume::volume::BlockVolume;

use super::attach::{Attached, VolumeMap};
use crate::meta::client::Client;
use crate::meta::service::watch::WATCH_NAMES_MAX;

/// What the watch stream said moved: a count that advances whenever a pool's PG map epoch
/// moves, and one per volume that advances whenever its record changes (its size, its stale
/// replicas, its attachment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stamps {
    pub pools: u64,
    pub volumes: BTreeMap<String, u64>,
}

impl Stamps {
    /// Whether the map or the record of `volume` moved between `self` and `now`.
    pub(crate) fn moved_for(&self, now: &Stamps, volume: &str) -> bool {
        self.pools != now.pools || self.volumes.get(volume) != now.volumes.get(volume)
    }
}

/// Follows the metadata service's watch stream (pools, and the records of the volumes named
/// in `volumes`) for as long as the gateway runs, and stamps `moved` whenever a pool's PG map
/// epoch or one of the volumes' records changes, so that the volume follows at once. When the
/// set of volumes changes (one attached or detached), the stream is opened again for the new
/// set, from the epoch reached.
pub(super) async fn watch_maps(
    client: Arc<Client>,
    mut volumes: tokio::sync::watch::Receiver<BTreeSet<String>>,
    moved: Arc<tokio::sync::watch::Sender<Stamps>>,
) {
    let mut follower = MapFollower {
        epoch: 0,
        pools: BTreeMap::new(),
        volumes: BTreeMap::new(),
        moved,
    };
    loop {
        let names = volumes.borrow_and_update().clone();
        // Past the server's limit on names, every volume's record comes (and most are ignored).
        let request = pb::WatchRequest {
            exclude_nodes: true,
            exclude_volumes: names.is_empty(),
            volume_names: if names.len() <= WATCH_NAMES_MAX {
                names.iter().cloned().collect()
            } else {
                Vec::new()
            },
            ..pb::WatchRequest::default()
        };
        // The records of volumes no longer followed are forgotten; a volume followed again
        // starts from its record as the stream brings it.
        follower.volumes.retain(|name, _| names.contains(name));
        // The subscription itself never stops; a change of names ends this one.
        let (_keep, never) = tokio::sync::watch::channel(false);
        tokio::select! {
            _ = crate::meta::watcher::follow(&client, request, &mut follower, never) => return,
            changed = volumes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// The PG map epoch of every pool and the record of every followed volume, as the watch
/// stream brings them.
pub(super) struct MapFollower {
    epoch: u64,
    pools: BTreeMap<String, u64>,
    volumes: BTreeMap<String, pb::Volume>,
    moved: Arc<tokio::sync::watch::Sender<Stamps>>,
}

impl crate::meta::watcher::Follower for MapFollower {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn apply(&mut self, event: pb::WatchEvent) -> bool {
        if !event.full && event.base_epoch != self.epoch {
            return false;
        }
        let pools_before = self.pools.clone();
        if event.full {
            self.pools.clear();
        }
        for p in event.pools {
            self.pools.insert(p.name, p.map_epoch);
        }
        for name in event.removed_pools {
            self.pools.remove(&name);
        }
        let mut moved_volumes = Vec::new();
        for v in event.volume_records {
            if self.volumes.get(&v.name) != Some(&v) {
                moved_volumes.push(v.name.clone());
                self.volumes.insert(v.name.clone(), v);
            }
        }
        for name in event.removed_volumes {
            if self.volumes.remove(&name).is_some() {
                moved_volumes.push(name);
            }
        }
        self.epoch = event.cluster_epoch;
        let pools_moved = self.pools != pools_before;
        if pools_moved || !moved_volumes.is_empty() {
            tracing::debug!(epochs = ?self.pools, volumes = ?moved_volumes, "PG maps or volume records moved");
            self.moved.send_modify(|stamps| {
                stamps.pools += u64::from(pools_moved);
                for name in moved_volumes {
                    *stamps.volumes.entry(name).or_default() += 1;
                }
            });
        }
        true
    }
}

/// Reads the volume's PG map and stale replicas, the pool's map and the nodes' addresses again,
/// and has `volume` follow them: replicas re-placed onto new nodes join as stale (to be
/// rebuilt), and replicas of nodes taken out leave. Then follows the volume's QoS and size.
pub(super) async fn follow_map(attached: &Attached, client: &Client) -> anyhow::Result<Followed> {
    let map = VolumeMap::fetch(client, &attached.name).await?;
    attached.qos.set(map.qos());
    attached.scrub.send_if_modified(|view| {
        let now = map.scrub_view();
        let changed = *view != now;
        *view = now;
        changed
    });
    let (acting, addresses) = map.acting_sets()?;
    *attached.node_of.write().expect("node addresses") = addresses;
    attached
        .volume
        .follow(&acting)
        .map_err(|e| anyhow::anyhow!("follow the PG map: {e}"))?;
    follow_size(attached, map.size_bytes()).await
}

/// How a [`follow_map`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Followed {
    /// The volume follows the map and has the size the cluster records.
    Done,
    /// A replica does not hold the recorded size yet: read the map again later.
    SizePending,
}

/// Grows the volume to `size_bytes`, the size the cluster records, once every live replica
/// holds it (their storage agents grow them as they see the record); until then the next
/// call tries again. The NBD connections opened from then on see the new size.
async fn follow_size(attached: &Attached, size_bytes: u64) -> anyhow::Result<Followed> {
    if size_bytes <= attached.volume.size() {
        // The metadata service refuses shrinking, and a lagging member's record is older.
        return Ok(Followed::Done);
    }
    match attached.volume.grow(size_bytes).await {
        Ok(Growth::Grown) => Ok(Followed::Done),
        Ok(Growth::Waiting { replica }) => {
            tracing::debug!(volume = %attached.name, size_bytes, %replica, "resized: waiting for the replica's node to grow it");
            Ok(Followed::SizePending)
        }
        Err(e) => Err(anyhow::anyhow!("grow to {size_bytes} bytes: {e}")),
    }
}
