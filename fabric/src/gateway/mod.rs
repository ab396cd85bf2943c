//! `fabricd gateway`: the volume driver as a process of its own. It attaches each volume it
//! serves (taking a fencing epoch from the metadata service), builds the volume's acting sets
//! from its pool's PG map and the nodes' data addresses, and exports the replicated volumes
//! over NBD. Storage nodes can then die while the export stays up.
//!
//! A replica that fails a write leaves its PG's acting set through the metadata service
//! (`RemoveReplica`, a Raft command) before the write is acknowledged, so the cluster's PG map
//! always names which copies are current. Every `RESYNC_INTERVAL_MS` the gateway looks for
//! stale replicas that answer again and resyncs them (`ReplicatedVolume::resync`: only the
//! extents that changed), then restores them through `RestoreReplica`. It reads the volume's
//! map again at once when the watch stream reports a new PG map epoch or a change of the
//! volume's record (which it follows by name), and otherwise only every 30 s as a safety net.
//! Each read also follows a resize: once every live replica holds the new size, the volume
//! takes it (`ReplicatedVolume::grow`) and every NBD connection made from then on exports it.
//!
//! Every membership change (`RemoveReplica`, `RestoreReplica`, `ReportRebuild`, `DetachVolume`)
//! names the attach epoch the gateway got for the volume. Once another client attaches, the
//! metadata service refuses them as fenced: a gateway superseded mid-resync may have missed
//! the new writer's writes, so it must not restore a replica. Its resyncs stop from then on.

mod attach;
mod maps;
mod metered;
pub use metered::Metered;
mod observer;
mod resync;

use crate::metrics::{Metrics, VolumeMetrics};
pub(crate) use attach::{Attached, detach, open_volume};
use maps::watch_maps;
pub(crate) use resync::resync_round;
use resync::resync_stale;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use volume::client::{PoolConfig, REMOVAL_WAIT_MS_DEFAULT, ReplicaPool};
use volume::volume::BlockVolume;

use crate::meta::client::{CALL_RETRY_DEADLINE_MS, Client};

/// How long the gateway waits for `min_replicas` of every PG to hold a volume before giving up.
pub const REPLICAS_READY_TIMEOUT_MS: u64 = 30_000;
/// How long it waits for the rest, once every PG has `min_replicas` ready.
pub const REPLICAS_GRACE_MS: u64 = 3_000;
/// How often the gateway looks for stale replicas that answer again.
pub const RESYNC_INTERVAL_MS: u64 = 1_000;
/// Stale replicas resynced at once. Each resync also has steps that copy nothing (versions
/// exchange, flush, the held check and the metadata commit); with many at once, the others'
/// copies keep the disks busy meanwhile. The copies themselves are bounded per destination
/// node, across every volume of the process, by the shared `ReplicaPool`.
pub const RESYNCS_IN_PARALLEL_MAX: usize = 64;

/// Deadline of one metadata call attempt of the gateway, before it asks the next member. A
/// replica that failed leaves its acting set through such a call while the write waits at
/// most `REMOVAL_WAIT_MS_DEFAULT`; with the client's default (12 s) a member whose packets
/// are dropped by a partition made the first removal after the cut miss that wait, and the
/// write fail, although the other members committed it in milliseconds.
pub const METADATA_ATTEMPT_DEADLINE_MS: u64 = 3_000;
const _: () = assert!(2 * METADATA_ATTEMPT_DEADLINE_MS < REMOVAL_WAIT_MS_DEFAULT);

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
    /// How long a metadata call keeps retrying while no member can serve it (a removal that
    /// gives up is tried again later; shortened in tests of long metadata outages).
    #[arg(long, default_value_t = CALL_RETRY_DEADLINE_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub metadata_retry_deadline_ms: u64,
    /// Serve Prometheus metrics at http://IP:PORT/metrics.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
}

/// Serves the volumes until SIGINT or SIGTERM, then flushes them.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let mut stop = crate::dev::StopSignals::install();
    let mut client = Client::new(args.endpoints.clone());
    client.retry_deadline = Duration::from_millis(args.metadata_retry_deadline_ms);
    client.attempt_deadline = Duration::from_millis(METADATA_ATTEMPT_DEADLINE_MS);
    let client = Arc::new(client);
    // One pool for every volume: links to a node, and the copy budget towards it, are shared.
    let pool = ReplicaPool::tcp(PoolConfig::default()).context("replica pool")?;
    let attach_as = args
        .client_name
        .clone()
        .unwrap_or_else(|| format!("gateway-{}", args.nbd_listen));
    let volume_metrics = VolumeMetrics::default();
    if let Some(listen) = args.metrics_listen {
        let metrics = Metrics::new();
        metrics.register_volumes(&volume_metrics);
        let bound = crate::metrics::serve(metrics, listen)
            .await
            .with_context(|| format!("serve metrics on {listen}"))?;
        println!("gateway serving metrics at http://{bound}/metrics");
    }
    let mut attached: Vec<Attached> = Vec::new();
    let mut resyncs = tokio::task::JoinSet::new();
    let (maps_moved, maps_moved_rx) = tokio::sync::watch::channel(maps::Stamps::default());
    resyncs.spawn(watch_maps(
        Arc::clone(&client),
        args.volumes.clone(),
        maps_moved,
    ));
    for name in &args.volumes {
        let a = open_volume(
            &client,
            &pool,
            name,
            &attach_as,
            args.force,
            volume_metrics.clone(),
        )
        .await
        .with_context(|| format!("open volume {name}"))?;
        resyncs.spawn(resync_stale(
            a.clone(),
            Arc::clone(&client),
            maps_moved_rx.clone(),
        ));
        attached.push(a);
    }
    let exports: Vec<Arc<dyn BlockVolume>> = attached
        .iter()
        .map(|a| {
            let volume = Arc::new(a.volume.clone()) as Arc<dyn BlockVolume>;
            Arc::new(Metered::new(volume, volume_metrics.clone())) as Arc<dyn BlockVolume>
        })
        .collect();

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
    stop.wait().await;
    tracing::info!("gateway stopping: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    let _ = serving.await;
    resyncs.shutdown().await;
    for a in &attached {
        a.volume
            .flush()
            .await
            .map_err(|e| anyhow::anyhow!("flush {}: {e}", a.name))?;
        detach(&client, a, &attach_as).await;
    }
    Ok(())
}
