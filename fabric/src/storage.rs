//! The storage side of a node: its extent store, the replica server that drivers write to, and
//! the agent that gives the store a replica of every volume the cluster holds.
//!
//! The agent follows the metadata service's watch stream (volumes only): a volume created in
//! the cluster is created in the store as soon as the event arrives, so a driver finds its
//! replicas ready (it waits for them, see the gateway), and a resized one is grown
//! (`ReplicaServer::ensure_volume`); the gateway serves the new size once every replica has
//! it. A replica larger than the record is never shrunk: that is logged, once. A volume's QoS
//! reservation and weight go to the disk's scheduler. Until PG maps
//! drive it, every node holds every volume (thin, so unwritten ranges cost nothing).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use proto::meta as pb;
use tokio::sync::watch;
use tokio::task::JoinSet;
use volume::replica::{ReplicaConfig, ReplicaServer};
use volume::sched::governor::{Governor, GovernorConfig};
use volume::sched::mclock::{Rate, Spec};
use volume::store::ExtentStore;
use volume::wire::VolumeId;

use crate::config::IoEngine;
use crate::identity::Transport;
use crate::meta::client::Client;
use crate::meta::watcher::{ClusterView, Follower, follow};

/// How often the recovery limit of the disk is judged, in ms.
const RECOVERY_WINDOW_MS: u64 = 500;

/// A running replica server and its agent.
pub struct Storage {
    pub data_addr: SocketAddr,
    pub server: Arc<ReplicaServer>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Storage {
    /// Opens the store in `dir`, serves replica traffic on `listener` and starts the agent that
    /// creates the cluster's volumes (asking the metadata members at `endpoints`), and node
    /// `node`'s inference worker (its models in `node_dir/models`).
    pub async fn start(
        node: u64,
        node_dir: &Path,
        dir: &Path,
        listener: tokio::net::TcpListener,
        endpoints: Vec<String>,
        transport: Transport,
    ) -> anyhow::Result<Storage> {
        let disk = crate::dev::open_disk(IoEngine::Uring, &dir.display().to_string())?;
        let store = ExtentStore::open(dir, disk)
            .await
            .context("open the replica store")?;
        // With TLS, an attach epoch is admitted only with a capability signed by the cell key;
        // in process (simulations, benchmarks) on the frame's word as before.
        let keys = transport.tls().map(|_| crate::storage_keys::load(dir));
        let (stop, stopped) = watch::channel(false);
        let keys_client = Arc::new(Client::new(endpoints.clone(), transport.clone()));
        if let Some((keys, false)) = &keys {
            // A new node: it registers (and is given replicas) once it can admit a writer.
            crate::storage_keys::first(keys, dir, &keys_client, &mut stopped.clone()).await;
        }
        let keys = keys.map(|(keys, _)| keys);
        let config = ReplicaConfig {
            capabilities: keys.clone(),
            // With TLS, only storage nodes read replicas without an attach (inference).
            scan_readers: transport.tls().map(|_| is_storage_node as fn(&str) -> bool),
            ..ReplicaConfig::default()
        };
        let server = ReplicaServer::new(Arc::new(store), config);
        let data_addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        match transport.tls() {
            Some(tls) => tasks.spawn(crate::replica_listener::serve(
                Arc::clone(&server),
                listener,
                Arc::clone(tls),
                stopped.clone(),
            )),
            None => tasks.spawn(Arc::clone(&server).serve(listener, stopped.clone())),
        };
        if let Some(tls) = transport.tls() {
            let follow =
                crate::meta::trust_follow::follow_client(Arc::clone(&keys_client), Arc::clone(tls));
            let mut stop = stopped.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = follow => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            });
        }
        if let Some(keys) = keys {
            tasks.spawn(crate::storage_keys::follow(
                keys,
                dir.to_path_buf(),
                keys_client,
                stopped.clone(),
            ));
        }
        // Recovery keeps the clients' p99 on this disk within its target (see
        // `volume::sched::governor`), judged twice a second.
        tasks.spawn(Arc::clone(server.scheduler()).govern_recovery(
            Governor::new(GovernorConfig::default()),
            std::time::Duration::from_millis(RECOVERY_WINDOW_MS),
            stopped.clone(),
        ));
        tasks.spawn({
            let (server, node_dir) = (Arc::clone(&server), node_dir.to_path_buf());
            let (endpoints, transport, stop) =
                (endpoints.clone(), transport.clone(), stopped.clone());
            async move {
                crate::embed::worker::run(node, server, &node_dir, endpoints, transport, stop).await
            }
        });
        tasks.spawn(follow_volumes(
            Arc::clone(&server),
            endpoints,
            transport,
            stopped,
        ));
        tracing::info!(%data_addr, "replica server listening");
        Ok(Storage {
            data_addr,
            server,
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

/// Creates a replica of every volume the cluster holds, and grows those the cluster resized,
/// following the watch stream (volumes only), until `stop`.
async fn follow_volumes(
    server: Arc<ReplicaServer>,
    endpoints: Vec<String>,
    transport: Transport,
    stop: watch::Receiver<bool>,
) {
    let (tx, mut rx) = watch::channel(Volumes::default());
    let mut follower = VolumeList {
        view: ClusterView::default(),
        tx,
    };
    let request = pb::WatchRequest {
        exclude_nodes: true,
        exclude_pools: true,
        ..pb::WatchRequest::default()
    };
    let subscription = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = Client::new(endpoints, transport);
            follow(&client, request, &mut follower, stop).await;
        }
    });
    let mut refused = std::collections::HashSet::new();
    let mut stop = stop;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            changed = rx.changed() => if changed.is_err() { break },
        }
        let list: Volumes = rx.borrow_and_update().clone();
        for (&id, held) in &list.volumes {
            let (size_bytes, name) = (held.size_bytes, &held.name);
            if let Err(e) = server.ensure_volume(VolumeId(id), size_bytes).await
                && refused.insert((id, size_bytes))
            {
                // Logged once per size: a replica larger than the record stays so, and the
                // next event retries a create or grow that failed.
                tracing::warn!(volume = id, %name, size_bytes, error = %e, "replica of volume not created or grown");
            }
            if let Err(e) = server.scheduler().set_volume_spec(id, disk_spec(&held.qos)) {
                tracing::warn!(volume = id, %name, error = %e, "QoS of volume not applied");
            }
        }
        // Ids are assigned in order and never reused: one below the next id that the cluster
        // no longer holds was deleted, and its replica goes (a lagging member's view, which
        // lacks a newer volume, also has a lower next id).
        for id in server.volume_ids() {
            if id.0 < list.next_volume_id && !list.volumes.contains_key(&id.0) {
                match server.delete_volume(id).await {
                    Ok(()) => {
                        tracing::info!(volume = %id, "volume deleted in the cluster; replica removed")
                    }
                    Err(e) => {
                        tracing::warn!(volume = %id, error = %e, "replica of a deleted volume not removed")
                    }
                }
            }
        }
    }
    subscription.abort();
}

/// Whether the peer principal `peer` is a storage node of the cluster.
fn is_storage_node(peer: &str) -> bool {
    peer.parse::<crate::identity::Principal>()
        .is_ok_and(|p| matches!(p.kind(), crate::identity::PrincipalKind::Node(_)))
}

/// What this node's disk scheduler honours of a volume's QoS: its reservation and weight.
/// Its limits are the gateway's: a node sees only the IO of the replicas it holds, and every
/// replica of a write sees that write, so a limit here would be neither exact nor fair.
fn disk_spec(qos: &pb::VolumeQos) -> Spec {
    Spec {
        reservation: Rate {
            iops: qos.iops_reservation,
            bytes_per_sec: 0,
        },
        weight: crate::meta::model::qos_weight(qos.weight),
        limit: Rate::NONE,
    }
}

/// A volume as the agent follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    size_bytes: u64,
    name: String,
    qos: pb::VolumeQos,
}

/// The cluster's volumes as the agent follows them.
#[derive(Clone, Debug, Default)]
struct Volumes {
    /// By volume id.
    volumes: std::collections::BTreeMap<u64, Held>,
    next_volume_id: u64,
}

/// The cluster's volumes, published after every event that changed them.
struct VolumeList {
    view: ClusterView,
    tx: watch::Sender<Volumes>,
}

impl Follower for VolumeList {
    fn epoch(&self) -> u64 {
        self.view.epoch()
    }

    fn apply(&mut self, event: pb::WatchEvent) -> bool {
        // Attaches and acting-set changes touch volume records too; the store cares only
        // about which volumes exist, their sizes and their QoS.
        let changed = event.full
            || !event.removed_volumes.is_empty()
            || event.volume_records.iter().any(|v| {
                self.view.volumes.get(&v.name).is_none_or(|have| {
                    (have.id, have.size_bytes, have.qos) != (v.id, v.size_bytes, v.qos)
                })
            });
        if !self.view.apply(event) {
            return false;
        }
        if changed {
            self.tx.send_replace(Volumes {
                volumes: self
                    .view
                    .volumes
                    .values()
                    .map(|v| {
                        let held = Held {
                            size_bytes: v.size_bytes,
                            name: v.name.clone(),
                            qos: v.qos.unwrap_or_default(),
                        };
                        (v.id, held)
                    })
                    .collect(),
                next_volume_id: self.view.next_volume_id,
            });
        }
        true
    }
}
