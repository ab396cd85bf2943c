//! A simulated volume driver: a real [`ReplicatedVolume`] over the simulated network, attached
//! through the simulated metadata service, with the gateway's two duties: report failed
//! replicas (the [`AclObserver`]) and follow the PG map, resyncing stale replicas back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use volume::BlockVolume;
use volume::client::{
    AclFuture, AclObserver, ActingSets, BELOW_MIN_WAIT_MS_DEFAULT, ClientConfig, PoolConfig,
    REMOVAL_WAIT_MS_DEFAULT, RemovalError, ReplicaFailure, ReplicaPool, ReplicatedVolume,
};
use volume::wire::VolumeId;

use super::meta::{MetaError, SimMeta};
use super::net::SimNet;
use crate::meta::command::{Applied, CommandV1};
use crate::meta::state::ClusterState;

/// How often the driver looks at the PG map and for stale replicas to resync, in simulated
/// milliseconds.
pub const FOLLOW_INTERVAL_MS: u64 = 250;

/// One attached driver.
pub struct SimClient {
    pub id: u32,
    pub name: String,
    pub epoch: u64,
    pub volume: Arc<ReplicatedVolume>,
    meta: Arc<SimMeta>,
    volume_name: String,
    node_of: Arc<HashMap<SocketAddr, u64>>,
    pub addr_of: Arc<HashMap<u64, SocketAddr>>,
}

/// The acting sets of `volume` in `state`: per PG, its replicas not stale, then the stale.
pub fn acting_sets(
    state: &ClusterState,
    volume: &str,
    addr_of: &HashMap<u64, SocketAddr>,
) -> ActingSets {
    let v = &state.volumes[volume];
    let pgs = &state.pools[&v.spec.pool].map.pgs;
    let addrs = |ids: &mut dyn Iterator<Item = u64>| ids.map(|id| addr_of[&id]).collect();
    ActingSets {
        groups: (0..pgs.len())
            .map(|g| addrs(&mut v.acting(g as u32, &pgs[g]).into_iter()))
            .collect(),
        stale: (0..pgs.len())
            .map(|g| {
                let stale = v.stale.get(&(g as u32)).cloned().unwrap_or_default();
                addrs(&mut pgs[g].iter().copied().filter(|n| stale.contains(n)))
            })
            .collect(),
    }
}

impl SimClient {
    /// Attaches `volume` as client `id` (taking it over with `force`) and installs the new
    /// epoch on the replicas with a flush, as the gateway does.
    pub async fn attach(
        id: u32,
        net: &SimNet,
        meta: &Arc<SimMeta>,
        volume: &str,
        addr_of: Arc<HashMap<u64, SocketAddr>>,
        force: bool,
    ) -> Result<SimClient, String> {
        let name = format!("sim-client-{id}");
        let attach = CommandV1::AttachVolume {
            name: volume.to_owned(),
            client: name.clone(),
            force,
        };
        let epoch = loop {
            match meta.apply(attach.clone()).await {
                Ok(Applied::Attached { attachment, .. }) => break attachment.epoch,
                Ok(other) => return Err(format!("attach answered {other:?}")),
                Err(MetaError::Unavailable) => continue,
                Err(MetaError::Refused(e)) => return Err(format!("attach refused: {e}")),
            }
        };
        let (acting, config) = {
            let state = meta.state();
            let v = &state.volumes[volume];
            let rule = &state.pools[&v.spec.pool].spec.rule;
            let config = ClientConfig {
                name: volume.to_owned(),
                volume: VolumeId(v.id),
                size_bytes: v.spec.size_bytes,
                attach_epoch: epoch,
                min_replicas: rule.min_replicas as usize,
                below_min_wait_ms: BELOW_MIN_WAIT_MS_DEFAULT,
                removal_wait_ms: REMOVAL_WAIT_MS_DEFAULT,
                resync_pace_bytes_per_sec: volume::client::RESYNC_BYTES_PER_SEC_MAX,
            };
            (acting_sets(&state, volume, &addr_of), config)
        };
        let node_of: Arc<HashMap<SocketAddr, u64>> =
            Arc::new(addr_of.iter().map(|(&id, &a)| (a, id)).collect());
        let observer = Arc::new(Observer {
            meta: Arc::clone(meta),
            volume: volume.to_owned(),
            node_of: Arc::clone(&node_of),
        });
        let pool = ReplicaPool::new(PoolConfig::default(), net.connector(id))
            .map_err(|e| e.to_string())?;
        let replicated = ReplicatedVolume::new(config, acting, observer, pool)
            .map_err(|e| format!("set up the volume: {e}"))?;
        let client = SimClient {
            id,
            name,
            epoch,
            volume: Arc::new(replicated),
            meta: Arc::clone(meta),
            volume_name: volume.to_owned(),
            node_of,
            addr_of,
        };
        // Until a flush succeeds the epoch is not installed; a failed one has removed the
        // replicas that failed it, so a retry goes to the others.
        let mut tries = 0;
        while let Err(e) = client.volume.flush().await {
            tries += 1;
            if client.volume.fenced_by().is_some() || tries == 20 {
                return Err(format!("install attach epoch {epoch}: {e}"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            client.round().await;
        }
        client
            .volume
            .reconcile()
            .await
            .map_err(|e| format!("reconcile after attach epoch {epoch}: {e}"))?;
        Ok(client)
    }

    /// Follows the PG map and resyncs stale replicas, for as long as the client is not
    /// fenced.
    pub async fn follow_and_resync(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(FOLLOW_INTERVAL_MS)).await;
            if self.volume.fenced_by().is_some() {
                return;
            }
            self.round().await;
        }
    }

    /// One round: follow the map (if the service answers), resync each stale replica that
    /// answers.
    pub async fn round(&self) {
        if self.meta.is_up() {
            let acting = acting_sets(&self.meta.state(), &self.volume_name, &self.addr_of);
            if let Err(e) = self.volume.follow(&acting) {
                tracing::warn!(error = %e, "PG map not followed");
            }
        }
        if let Err(e) = self.volume.probe_unflushed().await {
            tracing::debug!(error = %e, "replicas not probed");
        }
        for (group, replica) in self.volume.stale_replicas() {
            if self.volume.extent_versions(replica, 0, 1).await.is_err() {
                continue;
            }
            let node = self.node_of[&replica];
            let restore = async {
                let command = CommandV1::RestoreReplicaV2 {
                    volume: self.volume_name.clone(),
                    pg: group as u32,
                    node,
                    attach_epoch: self.epoch,
                };
                self.meta
                    .apply(command)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("restore node {node} in PG {group}: {e:?}"))
            };
            if let Err(e) = self.volume.resync(group, replica, |_, _| {}, restore).await {
                tracing::debug!(group, %replica, error = %e, "resync failed; next round");
            }
        }
    }

    /// Whether this client holds no stale replica nor one on its way out, and the metadata
    /// lists none stale.
    pub fn settled(&self) -> bool {
        let state = self.meta.state();
        self.volume.stale_replicas().is_empty()
            && self.volume.leaving_replicas().is_empty()
            && state.volumes[&self.volume_name].stale.is_empty()
    }
}

/// Takes failed replicas out through the simulated metadata service.
struct Observer {
    meta: Arc<SimMeta>,
    volume: String,
    node_of: Arc<HashMap<SocketAddr, u64>>,
}

impl AclObserver for Observer {
    fn replica_failed(&self, failure: ReplicaFailure) -> AclFuture {
        let meta = Arc::clone(&self.meta);
        let volume = self.volume.clone();
        let node = self.node_of.get(&failure.replica).copied();
        Box::pin(async move {
            let node = node.ok_or_else(|| {
                RemovalError::Refused(format!("{} is no node's address", failure.replica))
            })?;
            let command = CommandV1::RemoveReplicaV2 {
                volume,
                pg: failure.group as u32,
                node,
                attach_epoch: failure.attach_epoch,
            };
            meta.apply(command).await.map(|_| ()).map_err(|e| {
                e.removal_error(&format!("remove node {node} from PG {}", failure.group))
            })
        })
    }

    fn fenced(&self, volume: VolumeId, our_epoch: u64, current: u64) {
        tracing::debug!(%volume, our_epoch, current, "simulated driver fenced");
    }
}
