//! `fabricd gateway`: the volume driver as a process of its own. It attaches each volume it
//! serves (taking a fencing epoch from the metadata service), builds the volume's acting sets
//! from its pool's PG map and the nodes' data addresses, and exports the replicated volumes
//! over NBD. Storage nodes can then die while the export stays up.
//!
//! A replica that fails a write leaves its PG's acting set through the metadata service
//! (`RemoveReplica`, a Raft command) before the write is acknowledged, so the cluster's PG map
//! always names which copies are current. Every `RESYNC_INTERVAL_MS` the gateway looks for
//! stale replicas that answer again and resyncs them (`ReplicatedVolume::resync`: only the
//! extents that changed), then restores them through `RestoreReplica`. It follows the PG map
//! at once when the watch stream reports a new map epoch, and on every such look.
//!
//! Every membership change (`RemoveReplica`, `RestoreReplica`, `ReportRebuild`, `DetachVolume`)
//! names the attach epoch the gateway got for the volume. Once another client attaches, the
//! metadata service refuses them as fenced: a gateway superseded mid-resync may have missed
//! the new writer's writes, so it must not restore a replica. Its resyncs stop from then on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use proto::meta as pb;
use volume::client::{
    AclFuture, AclObserver, ActingSets, BELOW_MIN_WAIT_MS_DEFAULT, ClientConfig, PoolConfig,
    REMOVAL_WAIT_MS_DEFAULT, RemovalError, ReplicaFailure, ReplicaPool, ReplicatedVolume,
};
use volume::volume::BlockVolume;
use volume::wire::VolumeId;

use crate::meta::client::{CALL_RETRY_DEADLINE_MS, Client};
use crate::meta::command::{FENCED_WORDS, fencing_epoch};

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
    let mut attached: Vec<Attached> = Vec::new();
    let mut resyncs = tokio::task::JoinSet::new();
    let (maps_moved, maps_moved_rx) = tokio::sync::watch::channel(());
    resyncs.spawn(watch_maps(Arc::clone(&client), maps_moved));
    for name in &args.volumes {
        let a = open_volume(&client, &pool, name, &attach_as, args.force)
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
        .map(|a| Arc::new(a.volume.clone()) as Arc<dyn BlockVolume>)
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

/// A volume this process attached, and what its membership changes need: the attach epoch
/// they act under, the node behind each replica address, and whether the metadata service
/// has found the attachment superseded. The epoch is kept here rather than asked of the
/// volume driver, as it belongs to the attachment, which the gateway holds.
#[derive(Clone)]
pub(crate) struct Attached {
    pub name: String,
    pub volume: ReplicatedVolume,
    pub attach_epoch: u64,
    pub node_of: NodeAddresses,
    pub superseded: Superseded,
}

/// Whether the metadata service refused one of an attachment's membership changes because a
/// newer attach fenced it, with the refusal. That is final for the attachment: its later
/// changes would be refused alike, so its resyncs stop.
#[derive(Clone, Default)]
pub(crate) struct Superseded(Arc<OnceLock<String>>);

impl Superseded {
    /// Whether `status` is a fencing refusal; the first one is recorded and logged (once per
    /// attachment, however many changes are refused).
    fn note(&self, volume: &str, status: &tonic::Status) -> bool {
        let fenced = status.code() == tonic::Code::FailedPrecondition
            && status.message().contains(FENCED_WORDS);
        if fenced && self.0.set(status.message().to_owned()).is_ok() {
            tracing::warn!(volume, reason = %status.message(), "a newer attach fenced this one: no more membership changes or resyncs of the volume from here");
        }
        fenced
    }

    /// The refusal that found the attachment superseded, if one did.
    pub(crate) fn refusal(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// Lets go of the attached volume after its last flush, so that it shows as available and the
/// rebuild agent may heal it while nobody serves it. Best effort: a gateway that was fenced,
/// or cannot reach the metadata service, leaves the attachment as it is.
pub(crate) async fn detach(client: &Client, attached: &Attached, attached_as: &str) {
    let name = attached.name.as_str();
    let req = pb::DetachVolumeRequest {
        name: name.into(),
        client: attached_as.into(),
        attach_epoch: attached.attach_epoch,
    };
    match client
        .call(|mut c| {
            let req = req.clone();
            async move { c.detach_volume(req).await }
        })
        .await
    {
        Ok(_) => tracing::info!(volume = name, "detached"),
        Err(s) => tracing::info!(volume = name, status = %s.message(), "not detached"),
    }
}

/// What the gateway reads of the cluster for one volume: the volume (with its stale replicas),
/// its pool (with the PG map) and the nodes (with their data addresses).
struct VolumeMap {
    volume: pb::Volume,
    pool: pb::Pool,
    nodes: Vec<pb::Node>,
}

impl VolumeMap {
    /// Reads the volume, its pool and the nodes the PG map names as one consistent view (one
    /// linearizable read at one applied index): a new map is never paired with old stale
    /// lists, which would make the replicas a PG just moved to look current while they hold
    /// nothing.
    async fn fetch(client: &Client, name: &str) -> anyhow::Result<VolumeMap> {
        let get = pb::GetVolumeRequest { name: name.into() };
        let map = client
            .call(|mut c| {
                let get = get.clone();
                async move { c.get_volume_map(get).await }
            })
            .await
            .map_err(|s| anyhow::anyhow!("volume {name}: {}", s.message()))?;
        Ok(VolumeMap {
            volume: map.volume.context("volume map without its volume")?,
            pool: map.pool.context("volume map without its pool")?,
            nodes: map.nodes,
        })
    }

    /// The acting sets and the node behind each replica address.
    fn acting_sets(&self) -> anyhow::Result<(ActingSets, HashMap<SocketAddr, u64>)> {
        acting_sets(&self.pool, &self.volume, &self.nodes)
    }
}

/// Attaches `name` and builds its replicated volume from the pool's PG map.
pub(crate) async fn open_volume(
    client: &Arc<Client>,
    pool: &Arc<ReplicaPool>,
    name: &str,
    attach_as: &str,
    force: bool,
) -> anyhow::Result<Attached> {
    let map = VolumeMap::fetch(client, name).await?;
    let volume = &map.volume;
    let rule = map.pool.rule.clone().context("pool without a rule")?;
    let (acting, node_of) = map.acting_sets()?;
    let node_of = Arc::new(RwLock::new(node_of));
    // One request id for every retry: a retried attach returns the epoch it granted rather
    // than granting another, which would fence this gateway by its own retry.
    let attach = pb::AttachVolumeRequest {
        name: name.into(),
        client: attach_as.into(),
        force,
        request_id: crate::meta::client::new_request_id(),
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
        below_min_wait_ms: BELOW_MIN_WAIT_MS_DEFAULT,
        removal_wait_ms: REMOVAL_WAIT_MS_DEFAULT,
    };
    let superseded = Superseded::default();
    let observer = Arc::new(ClusterObserver {
        client: Arc::clone(client),
        volume: name.to_owned(),
        node_of: Arc::clone(&node_of),
        superseded: superseded.clone(),
    });
    let replicated = ReplicatedVolume::new(config, acting.clone(), observer, Arc::clone(pool))
        .context("set up the replicated volume")?;
    wait_until_replicas_hold(&replicated, &acting, rule.min_replicas as usize).await?;
    // A flush carries the new epoch to every replica, which persists it: from here on a gateway
    // holding an older attach is refused, not merely outranked in the metadata.
    replicated
        .flush()
        .await
        .map_err(|e| anyhow::anyhow!("install attach epoch {}: {e}", attachment.attach_epoch))?;
    // Writes the previous holder had in flight may have reached some replicas only.
    let copied = replicated
        .reconcile()
        .await
        .map_err(|e| anyhow::anyhow!("reconcile the replicas after attach: {e}"))?;
    if copied > 0 {
        tracing::warn!(
            volume = name,
            bytes = copied,
            "replicas differed after the change of writer and were reconciled"
        );
    }
    Ok(Attached {
        name: name.to_owned(),
        volume: replicated,
        attach_epoch: attachment.attach_epoch,
        node_of,
        superseded,
    })
}

/// Follows the metadata service's watch stream (pools only) for as long as the gateway runs,
/// and signals `moved` whenever a pool's PG map epoch changes, so that every volume follows
/// the new map at once rather than at its next poll.
async fn watch_maps(client: Arc<Client>, moved: tokio::sync::watch::Sender<()>) {
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
struct PoolEpochs {
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

/// Which node serves each replica address; shared with the observer, refreshed with the map.
pub(crate) type NodeAddresses = Arc<RwLock<HashMap<SocketAddr, u64>>>;

/// Reads the volume's PG map and stale replicas, the pool's map and the nodes' addresses again,
/// and has `volume` follow them: replicas re-placed onto new nodes join as stale (to be
/// rebuilt), and replicas of nodes taken out leave.
async fn follow_map(attached: &Attached, client: &Client) -> anyhow::Result<()> {
    let (acting, addresses) = VolumeMap::fetch(client, &attached.name)
        .await?
        .acting_sets()?;
    *attached.node_of.write().expect("node addresses") = addresses;
    attached
        .volume
        .follow(&acting)
        .map_err(|e| anyhow::anyhow!("follow the PG map: {e}"))
}

/// Follows the PG map and resyncs stale replicas of the volume that answer, for as long as
/// the attachment is not superseded: a node that came back, or a node a PG was re-placed
/// onto (a rebuild).
async fn resync_stale(
    attached: Attached,
    client: Arc<Client>,
    mut maps_moved: tokio::sync::watch::Receiver<()>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(RESYNC_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watching = true;
    loop {
        // A moved map is followed at once; the tick retries replicas that were away.
        tokio::select! {
            _ = tick.tick() => {}
            moved = maps_moved.changed(), if watching => watching = moved.is_ok(),
        }
        if attached.superseded.refusal().is_some() {
            return;
        }
        resync_round(&attached, &client).await;
    }
}

/// Follows the PG map once and resyncs the stale replicas of the volume that answer, up to
/// [`RESYNCS_IN_PARALLEL_MAX`] at once. Nothing once the attachment is superseded.
pub(crate) async fn resync_round(attached: &Attached, client: &Arc<Client>) {
    let name = attached.name.as_str();
    if attached.superseded.refusal().is_some() {
        return;
    }
    if let Err(e) = follow_map(attached, client).await {
        tracing::debug!(volume = %name, error = %e, "PG map not refreshed");
    }
    // A replica that restarted while the volume was idle is found here, not by the next reader.
    if let Err(e) = attached.volume.probe_unflushed().await {
        tracing::debug!(volume = %name, error = %e, "replicas not probed");
    }
    let round: Vec<(usize, SocketAddr, u64)> = {
        let nodes = attached.node_of.read().expect("node addresses");
        attached
            .volume
            .stale_replicas()
            .into_iter()
            .filter_map(|(group, replica)| Some((group, replica, *nodes.get(&replica)?)))
            .collect()
    };
    if round.is_empty() {
        return;
    }
    tracing::debug!(volume = %name, replicas = round.len(), "resync round starting");
    let started = Instant::now();
    let copied = AtomicU64::new(0);
    let resynced = AtomicU64::new(0);
    futures::stream::iter(round)
        .for_each_concurrent(RESYNCS_IN_PARALLEL_MAX, |(group, replica, node)| {
            let (copied, resynced) = (&copied, &resynced);
            async move {
                if let Some(bytes) = resync_one(attached, client, group, replica, node).await {
                    copied.fetch_add(bytes, Ordering::Relaxed);
                    resynced.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    // Every round that brought a replica back says so, even when nothing needed copying: a
    // reader of the log (or a test) waiting for the end of the resyncs must not wait for a
    // round that copied data when the last one only confirmed replicas already current.
    let (bytes_copied, replicas) = (copied.into_inner(), resynced.into_inner());
    if replicas > 0 {
        tracing::info!(volume = %name, replicas, bytes_copied, elapsed_ms = started.elapsed().as_millis() as u64, "resync round done");
    }
}

/// Resyncs stale `replica` (on `node`) of `group` if it answers; the bytes copied, or `None`
/// if it is still away or the resync failed (the next round tries again).
async fn resync_one(
    attached: &Attached,
    client: &Arc<Client>,
    group: usize,
    replica: SocketAddr,
    node: u64,
) -> Option<u64> {
    let (volume, name) = (&attached.volume, attached.name.as_str());
    if let Err(e) = volume.extent_versions(replica, 0, 1).await {
        tracing::debug!(volume = %name, pg = group, node, error = %e, "replica does not answer yet; resync later");
        return None;
    }
    let req = pb::ReplicaRequest {
        volume: name.to_owned(),
        pg: group as u32,
        node,
        attach_epoch: attached.attach_epoch,
    };
    // Refused as fenced, the restore fails the resync: the replica stays stale for the
    // writer that superseded this one.
    let restore = async {
        client
            .call(|mut c| {
                let req = req.clone();
                async move { c.restore_replica(req).await }
            })
            .await
            .map(|_| ())
            .map_err(|s| {
                attached.superseded.note(name, &s);
                format!("restore node {node} in PG {group}: {}", s.message())
            })
    };
    // Progress goes to the metadata service at most once a second (and at the end), so that
    // `fabricctl volume show` can tell how far a rebuild has come.
    let last_report: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let progress = |done: u64, total: u64| {
        let mut last = last_report.lock().expect("last report");
        if done != total && last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        let client = Arc::clone(client);
        let superseded = attached.superseded.clone();
        let req = pb::ReportRebuildRequest {
            volume: name.to_owned(),
            progress: Some(pb::RebuildProgress {
                pg: group as u32,
                node,
                done_bytes: done,
                total_bytes: total,
            }),
            attach_epoch: attached.attach_epoch,
        };
        tokio::spawn(async move {
            let sent = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.report_rebuild(req).await }
                })
                .await;
            if let Err(s) = sent
                && !superseded.note(&req.volume, &s)
            {
                tracing::debug!(status = %s, "rebuild progress not recorded");
            }
        });
    };
    let started = Instant::now();
    match volume.resync(group, replica, progress, restore).await {
        Ok(report) => {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                volume = %name,
                pg = group,
                node,
                extents_in_pg = report.extents_in_group,
                extents_copied = report.extents_copied,
                bytes_copied = report.bytes_copied,
                "resync done"
            );
            Some(report.bytes_copied)
        }
        Err(e) if attached.superseded.refusal().is_some() => {
            // Logged already, where the refusal was noted.
            tracing::debug!(volume = %name, pg = group, node, error = %e, "resync given up: the attachment is superseded");
            None
        }
        Err(e) => {
            tracing::warn!(volume = %name, pg = group, node, error = %e, "resync failed; will retry");
            None
        }
    }
}

/// The data addresses of every PG's acting set (its replicas that are not stale), in PG
/// order, and the node behind each address.
fn acting_sets(
    pool: &pb::Pool,
    volume: &pb::Volume,
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
    let stale_in = |pg: u32| {
        volume
            .stale
            .iter()
            .find(|s| s.pg == pg)
            .map(|s| s.nodes.clone())
            .unwrap_or_default()
    };
    let groups = pgs
        .iter()
        .map(|pg| {
            let stale = stale_in(pg.pg);
            pg.replicas
                .iter()
                .filter(|id| !stale.contains(id))
                .map(|id| {
                    addrs.get(id).copied().with_context(|| {
                        format!("PG {} names node {id}, which serves no data", pg.pg)
                    })
                })
                .collect()
        })
        .collect::<anyhow::Result<Vec<Vec<SocketAddr>>>>()?;
    let stale = pgs
        .iter()
        .map(|pg| {
            stale_in(pg.pg)
                .iter()
                .filter(|id| pg.replicas.contains(id))
                .filter_map(|id| addrs.get(id).copied())
                .collect()
        })
        .collect();
    let node_of = addrs.into_iter().map(|(id, addr)| (addr, id)).collect();
    Ok((ActingSets { groups, stale }, node_of))
}

/// Reports failed replicas to the metadata service, which takes them out of the PG's acting
/// set; the write that found the failure is acknowledged only once that change is committed.
/// The change names the attach epoch the failure was seen under: once a newer attach fenced
/// it, it is refused and the write fails.
struct ClusterObserver {
    client: Arc<Client>,
    volume: String,
    node_of: NodeAddresses,
    superseded: Superseded,
}

impl AclObserver for ClusterObserver {
    fn replica_failed(&self, failure: ReplicaFailure) -> AclFuture {
        let client = Arc::clone(&self.client);
        let volume = self.volume.clone();
        let superseded = self.superseded.clone();
        let node = self
            .node_of
            .read()
            .expect("node addresses")
            .get(&failure.replica)
            .copied();
        Box::pin(async move {
            let node = node.ok_or_else(|| {
                RemovalError::Refused(format!("{} is no node's address", failure.replica))
            })?;
            let req = pb::ReplicaRequest {
                volume,
                pg: failure.group as u32,
                node,
                attach_epoch: failure.attach_epoch,
            };
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.remove_replica(req).await }
                })
                .await
                .map_err(|s| {
                    superseded.note(&req.volume, &s);
                    removal_error(&s, node, failure.group)
                })?;
            tracing::warn!(volume = %failure.volume, pg = failure.group, node, reason = %failure.reason, "replica left the acting set");
            Ok(())
        })
    }

    fn fenced(&self, volume: VolumeId, our_epoch: u64, current: u64) {
        tracing::error!(%volume, our_epoch, current, "volume fenced by a newer attach; this gateway refuses its IO");
    }
}

/// What a refused or failed `RemoveReplica` means to the volume driver: a metadata service
/// that cannot commit now (retried with backoff while the group's writes wait), a newer
/// attach (the volume is fenced), or a refusal that retrying will not change.
fn removal_error(status: &tonic::Status, node: u64, group: usize) -> RemovalError {
    let what = format!("remove node {node} from PG {group}: {}", status.message());
    match status.code() {
        tonic::Code::FailedPrecondition if status.message().contains(FENCED_WORDS) => {
            match fencing_epoch(status.message()) {
                Some(current) => RemovalError::Fenced { current },
                None => RemovalError::Refused(what),
            }
        }
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::Aborted
        | tonic::Code::Unknown
        | tonic::Code::ResourceExhausted
        | tonic::Code::Internal => RemovalError::Unavailable(what),
        _ => RemovalError::Refused(what),
    }
}

/// Waits until the replicas hold the volume (the storage agents create it a moment after the
/// metadata service does): all of them, or, once `REPLICAS_GRACE_MS` have passed, at least
/// `min_replicas` in every group. A replica that is down then fails its first request and
/// leaves the acting set like any other; the gateway does not wait for a node that may never
/// come back.
async fn wait_until_replicas_hold(
    volume: &ReplicatedVolume,
    acting: &ActingSets,
    min_replicas: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut ready: HashSet<SocketAddr> = HashSet::new();
    loop {
        let mut waiting: Vec<SocketAddr> = acting
            .groups
            .iter()
            .flatten()
            .filter(|r| !ready.contains(r))
            .copied()
            .collect();
        waiting.sort();
        waiting.dedup();
        for replica in waiting {
            match volume.extent_versions(replica, 0, 1).await {
                Ok(_) => {
                    ready.insert(replica);
                }
                Err(e) => tracing::debug!(%replica, error = %e, "replica not ready"),
            }
        }
        let short = acting
            .groups
            .iter()
            .position(|g| g.iter().filter(|r| ready.contains(r)).count() < min_replicas);
        let all = acting.groups.iter().flatten().all(|r| ready.contains(r));
        let waited = started.elapsed();
        if all || (short.is_none() && waited >= Duration::from_millis(REPLICAS_GRACE_MS)) {
            if !all {
                tracing::warn!(
                    "serving with some replicas not answering; they leave the acting set on first use"
                );
            }
            return Ok(());
        }
        if waited >= Duration::from_millis(REPLICAS_READY_TIMEOUT_MS) {
            bail!(
                "PG {} has fewer than {min_replicas} replicas holding the volume after {REPLICAS_READY_TIMEOUT_MS} ms",
                short.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
