//! `fabricd gateway`: the volume driver as a process of its own. It attaches each volume it
//! serves (taking a fencing epoch from the metadata service), builds the volume's acting sets
//! from its pool's PG map and the nodes' data addresses, and exports the replicated volumes
//! over NBD. Storage nodes can then die while the export stays up.
//!
//! A replica that fails a write leaves its PG's acting set through the metadata service
//! (`RemoveReplica`, a Raft command) before the write is acknowledged, so the cluster's PG map
//! always names which copies are current. What is not here yet: the PG map is read once at
//! start, not followed, and stale replicas are not resynced.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use proto::meta as pb;
use volume::client::{
    AclFuture, AclObserver, ActingSets, ClientConfig, REQUEST_TIMEOUT_MS_DEFAULT,
    REQUESTS_IN_FLIGHT_PER_REPLICA_MAX_DEFAULT, ReplicaFailure, ReplicatedVolume,
};
use volume::volume::BlockVolume;
use volume::wire::VolumeId;

use crate::meta::client::Client;

/// How long the gateway waits for every replica of a volume to hold it before giving up.
pub const REPLICAS_READY_TIMEOUT_MS: u64 = 30_000;

/// Flags of `fabricd gateway`.
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Metadata members to ask, comma-separated gRPC addresses.
    #[arg(long, value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// A volume to serve (repeat for more); it must exist in the cluster.
    #[arg(long = "volume", required = true)]
    pub volumes: Vec<String>,
    /// Where to accept NBD clients.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd_listen: SocketAddr,
    /// Name to attach as (default: `gateway-` and the NBD address, stable across restarts).
    #[arg(long)]
    pub client_name: Option<String>,
    /// Take the volumes over from another attachment; its writes are refused from then on.
    #[arg(long)]
    pub force: bool,
}

/// Serves the volumes until SIGINT or SIGTERM, then flushes them.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let client = Arc::new(Client::new(args.endpoints.clone()));
    let attach_as = args
        .client_name
        .clone()
        .unwrap_or_else(|| format!("gateway-{}", args.nbd_listen));
    let nodes = client
        .call(|mut c| async move { c.list_nodes(pb::ListNodesRequest {}).await })
        .await
        .context("list nodes")?
        .nodes;
    let pools = client
        .call(|mut c| async move { c.list_pools(pb::ListPoolsRequest {}).await })
        .await
        .context("list pools")?
        .pools;
    let mut exports: Vec<Arc<dyn BlockVolume>> = Vec::new();
    for name in &args.volumes {
        let volume = open_volume(&client, name, &attach_as, args.force, &nodes, &pools)
            .await
            .with_context(|| format!("open volume {name}"))?;
        exports.push(Arc::new(volume));
    }

    let server = volume::nbd::NbdServer::new(exports.clone(), volume::nbd::NbdConfig::default())
        .context("configure NBD server")?;
    let server = Arc::new(server);
    let tcp = tokio::net::TcpListener::bind(args.nbd_listen)
        .await
        .with_context(|| format!("listen on {}", args.nbd_listen))?;
    let addr = tcp.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(Arc::clone(&server).serve_tcp(tcp, stop_rx));
    for v in &exports {
        println!(
            "gateway serving replicated volume {} ({} bytes) at nbd://{addr}/{}",
            v.name(),
            v.size(),
            v.name()
        );
    }
    crate::dev::wait_for_stop().await;
    tracing::info!("gateway stopping: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    let _ = serving.await;
    for v in &exports {
        v.flush()
            .await
            .map_err(|e| anyhow::anyhow!("flush {}: {e}", v.name()))?;
    }
    Ok(())
}

/// Attaches `name` and builds its replicated volume from the pool's PG map.
async fn open_volume(
    client: &Arc<Client>,
    name: &str,
    attach_as: &str,
    force: bool,
    nodes: &[pb::Node],
    pools: &[pb::Pool],
) -> anyhow::Result<ReplicatedVolume> {
    let get = pb::GetVolumeRequest { name: name.into() };
    let volume = client
        .call(|mut c| {
            let get = get.clone();
            async move { c.get_volume(get).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let pool = pools
        .iter()
        .find(|p| p.name == volume.pool)
        .with_context(|| format!("pool {} is not listed", volume.pool))?;
    let rule = pool.rule.clone().context("pool without a rule")?;
    let (acting, node_of) = acting_sets(pool, nodes)?;
    let attach = pb::AttachVolumeRequest {
        name: name.into(),
        client: attach_as.into(),
        force,
    };
    let attachment = client
        .call(|mut c| {
            let attach = attach.clone();
            async move { c.attach_volume(attach).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("attach: {}", s.message()))?;
    tracing::info!(volume = name, epoch = attachment.attach_epoch, "attached");
    let config = ClientConfig {
        name: name.into(),
        volume: VolumeId(volume.id),
        size_bytes: volume.size_bytes,
        attach_epoch: attachment.attach_epoch,
        min_replicas: rule.min_replicas as usize,
        request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
        requests_in_flight_per_replica_max: REQUESTS_IN_FLIGHT_PER_REPLICA_MAX_DEFAULT,
    };
    let observer = Arc::new(ClusterObserver {
        client: Arc::clone(client),
        pool: pool.name.clone(),
        node_of,
    });
    let replicated = ReplicatedVolume::new(config, acting.clone(), observer)
        .context("set up the replicated volume")?;
    wait_until_replicas_hold(&replicated, &acting).await?;
    Ok(replicated)
}

/// The data addresses of every PG's acting set (its replicas that are not stale), in PG
/// order, and the node behind each address.
fn acting_sets(
    pool: &pb::Pool,
    nodes: &[pb::Node],
) -> anyhow::Result<(ActingSets, HashMap<SocketAddr, u64>)> {
    let mut addrs: HashMap<u64, SocketAddr> = HashMap::new();
    for n in nodes.iter().filter(|n| !n.data_addr.is_empty()) {
        let addr = n
            .data_addr
            .parse()
            .with_context(|| format!("node {} has a bad data address {:?}", n.id, n.data_addr))?;
        addrs.insert(n.id, addr);
    }
    let mut pgs = pool.pgs.clone();
    pgs.sort_by_key(|pg| pg.pg);
    if pgs.is_empty() || pgs.iter().enumerate().any(|(i, pg)| pg.pg as usize != i) {
        bail!("pool {} has no complete PG map yet", pool.name);
    }
    let groups = pgs
        .iter()
        .map(|pg| {
            pg.replicas
                .iter()
                .filter(|id| !pg.stale.contains(id))
                .map(|id| {
                    addrs.get(id).copied().with_context(|| {
                        format!("PG {} names node {id}, which serves no data", pg.pg)
                    })
                })
                .collect()
        })
        .collect::<anyhow::Result<Vec<Vec<SocketAddr>>>>()?;
    let node_of = addrs.into_iter().map(|(id, addr)| (addr, id)).collect();
    Ok((ActingSets { groups }, node_of))
}

/// Reports failed replicas to the metadata service, which takes them out of the PG's acting
/// set; the write that found the failure is acknowledged only once that change is committed.
struct ClusterObserver {
    client: Arc<Client>,
    pool: String,
    node_of: HashMap<SocketAddr, u64>,
}

impl AclObserver for ClusterObserver {
    fn replica_failed(&self, failure: ReplicaFailure) -> AclFuture {
        let client = Arc::clone(&self.client);
        let pool = self.pool.clone();
        let node = self.node_of.get(&failure.replica).copied();
        Box::pin(async move {
            let node = node.ok_or_else(|| format!("{} is no node's address", failure.replica))?;
            let req = pb::ReplicaRequest {
                pool: pool.clone(),
                pg: failure.group as u32,
                node,
            };
            let changed = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.remove_replica(req).await }
                })
                .await
                .map_err(|s| {
                    format!(
                        "remove node {node} from PG {}: {}",
                        failure.group,
                        s.message()
                    )
                })?;
            tracing::warn!(volume = %failure.volume, pool, pg = failure.group, node, map_epoch = changed.map_epoch, reason = %failure.reason, "replica left the acting set");
            Ok(())
        })
    }

    fn fenced(&self, volume: VolumeId, our_epoch: u64, current: u64) {
        tracing::error!(%volume, our_epoch, current, "volume fenced by a newer attach; this gateway refuses its IO");
    }
}

/// Waits until every replica answers for the volume: the storage agents create it a moment
/// after the metadata service does.
async fn wait_until_replicas_hold(
    volume: &ReplicatedVolume,
    acting: &ActingSets,
) -> anyhow::Result<()> {
    let mut replicas: Vec<SocketAddr> = acting.groups.iter().flatten().copied().collect();
    replicas.sort();
    replicas.dedup();
    let deadline = Instant::now() + Duration::from_millis(REPLICAS_READY_TIMEOUT_MS);
    for replica in replicas {
        loop {
            match volume.extent_versions(replica, 0, 1).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(%replica, error = %e, "replica not ready");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!(
                    "replica {replica} does not hold the volume after {REPLICAS_READY_TIMEOUT_MS} ms: {e}"
                ),
            }
        }
    }
    Ok(())
}
