//! The storage side of a node: its extent store, the replica server that drivers write to, and
//! the agent that gives the store a replica of every volume the cluster holds.
//!
//! The agent follows the metadata service (asking the node's members, which forward to the
//! leader): every `VOLUME_SYNC_INTERVAL_MS` it lists the volumes and creates
//! the missing ones in the store, so a driver never finds a replica without its volume for
//! longer than that. Until PG maps drive it, every node holds every volume (thin, so
//! unwritten ranges cost nothing).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::meta as pb;
use tokio::sync::watch;
use tokio::task::JoinSet;
use volume::replica::{ReplicaConfig, ReplicaServer};
use volume::store::ExtentStore;
use volume::wire::VolumeId;

use crate::config::IoEngine;
use crate::meta::client::Client;

/// How often the agent compares the store with the cluster's volumes.
pub const VOLUME_SYNC_INTERVAL_MS: u64 = 250;

/// A running replica server and its agent.
pub struct Storage {
    pub data_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Storage {
    /// Opens the store in `dir`, serves replica traffic on `listener` and starts the agent that
    /// creates the cluster's volumes (asking the metadata members at `endpoints`).
    pub async fn start(
        dir: &Path,
        listener: tokio::net::TcpListener,
        endpoints: Vec<String>,
    ) -> anyhow::Result<Storage> {
        let disk = crate::dev::open_disk(IoEngine::Uring, &dir.display().to_string())?;
        let store = ExtentStore::open(dir, disk)
            .await
            .context("open the replica store")?;
        let server = ReplicaServer::new(Arc::new(store), ReplicaConfig::default());
        let data_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(Arc::clone(&server).serve(listener, stopped.clone()));
        tasks.spawn(follow_volumes(server, endpoints, stopped));
        tracing::info!(%data_addr, "replica server listening");
        Ok(Storage {
            data_addr,
            stop,
            tasks,
        })
    }

    /// Stops accepting, lets connections finish what they read, and stops the agent.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Creates a replica of every volume the cluster lists, until `stop`.
async fn follow_volumes(
    server: Arc<ReplicaServer>,
    endpoints: Vec<String>,
    mut stop: watch::Receiver<bool>,
) {
    let client = Client::new(endpoints);
    let mut refused = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(VOLUME_SYNC_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let listed = client
            .call(|mut c| async move { c.list_volumes(pb::ListVolumesRequest {}).await })
            .await;
        let volumes = match listed {
            Ok(r) => r.volumes,
            Err(status) => {
                tracing::debug!(%status, "volume list unavailable; retrying");
                continue;
            }
        };
        for v in volumes {
            if let Err(e) = server.ensure_volume(VolumeId(v.id), v.size_bytes).await
                && refused.insert((v.id, v.size_bytes))
            {
                // A size mismatch is a resize the store does not follow yet: logged once.
                tracing::warn!(volume = v.id, name = %v.name, error = %e, "replica of volume not created");
            }
        }
    }
}
