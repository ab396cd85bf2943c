//! Attaching a volume: its map read at one applied index, the attach itself, the replicas
//! ready, the epoch installed; and letting go of it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use proto::meta as pb;
use volume::client::{
    ActingSets, BELOW_MIN_WAIT_MS_DEFAULT, ClientConfig, REMOVAL_WAIT_MS_DEFAULT, ReplicaPool,
    ReplicatedVolume,
};
use volume::volume::BlockVolume;
use volume::wire::VolumeId;

use super::observer::ClusterObserver;
use super::{REPLICAS_GRACE_MS, REPLICAS_READY_TIMEOUT_MS};
use crate::meta::client::Client;
use crate::meta::command::FENCED_WORDS;
use crate::metrics::VolumeMetrics;

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
    /// Where its removals and resync bytes are counted.
    pub metrics: VolumeMetrics,
    /// Its IO limits, following its record.
    pub qos: Arc<super::qos::QosGate>,
    /// Its scrub record and PG count, following its record (see `crate::scrub`).
    pub scrub: Arc<tokio::sync::watch::Sender<crate::scrub::ScrubView>>,
    /// Renews the attach capability while any clone of this lives (held for its drop).
    pub _renewal: Option<Arc<super::capability::Renewal>>,
}

/// Whether the metadata service refused one of an attachment's membership changes because a
/// newer attach fenced it, with the refusal. That is final for the attachment: its later
/// changes would be refused alike, so its resyncs stop.
#[derive(Clone, Default)]
pub(crate) struct Superseded(Arc<OnceLock<String>>);

impl Superseded {
    /// Whether `status` is a fencing refusal; the first one is recorded and logged (once per
    /// attachment, however many changes are refused).
    pub(crate) fn note(&self, volume: &str, status: &tonic::Status) -> bool {
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

/// A metadata call the service answered with an error, kept whole so that callers can tell
/// a missing volume or one held elsewhere from an outage.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", status.message())]
pub(crate) struct MetadataRefusal {
    pub what: String,
    pub status: tonic::Status,
}

/// Lets go of the attached volume after its last flush, so that it shows as available and the
/// rebuild agent may heal it while nobody serves it. Best effort: a gateway that was fenced,
/// or cannot reach the metadata service, leaves the attachment as it is.
pub(crate) async fn detach(client: &Client, attached: &Attached, attached_as: &str) {
    detach_epoch(client, &attached.name, attached_as, attached.attach_epoch).await
}

/// Lets go of the attachment of `name` by `attached_as` under `attach_epoch`; best effort.
async fn detach_epoch(client: &Client, name: &str, attached_as: &str, attach_epoch: u64) {
    let req = pb::DetachVolumeRequest {
        name: name.into(),
        client: attached_as.into(),
        attach_epoch,
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
pub(super) struct VolumeMap {
    volume: pb::Volume,
    pool: pb::Pool,
    nodes: Vec<pb::Node>,
}

impl VolumeMap {
    /// Reads the volume, its pool and the nodes the PG map names as one consistent view (one
    /// linearizable read at one applied index): a new map is never paired with old stale
    /// lists, which would make the replicas a PG just moved to look current while they hold
    /// nothing.
    pub(super) async fn fetch(client: &Client, name: &str) -> anyhow::Result<VolumeMap> {
        let get = pb::GetVolumeRequest { name: name.into() };
        let map = client
            .call(|mut c| {
                let get = get.clone();
                async move { c.get_volume_map(get).await }
            })
            .await
            .map_err(|status| MetadataRefusal {
                what: format!("volume {name}"),
                status,
            })?;
        Ok(VolumeMap {
            volume: map.volume.context("volume map without its volume")?,
            pool: map.pool.context("volume map without its pool")?,
            nodes: map.nodes,
        })
    }

    /// The volume's size in the cluster's record.
    pub(super) fn size_bytes(&self) -> u64 {
        self.volume.size_bytes
    }

    /// The volume's QoS in the cluster's record.
    pub(super) fn qos(&self) -> Option<&pb::VolumeQos> {
        self.volume.qos.as_ref()
    }

    /// The volume's scrub record and its pool's PG count.
    pub(super) fn scrub_view(&self) -> crate::scrub::ScrubView {
        crate::scrub::ScrubView {
            volume_id: self.volume.id,
            pg_count: self.pool.pg_count,
            record: self.volume.scrub.clone().unwrap_or_default(),
        }
    }

    /// The acting sets and the node behind each replica address.
    pub(super) fn acting_sets(&self) -> anyhow::Result<(ActingSets, HashMap<SocketAddr, u64>)> {
        acting_sets(&self.pool, &self.volume, &self.nodes)
    }
}

/// How a gateway opens a volume.
pub(crate) struct Opening<'a> {
    /// The client name it attaches as.
    pub attach_as: &'a str,
    /// Take the volume from another attachment.
    pub force: bool,
    pub metrics: VolumeMetrics,
    /// Its resyncs' fixed pace while clients do IO (0: none, see `ResyncPace`).
    pub resync_pace_bytes_per_sec: u64,
}

/// Attaches `name` and builds its replicated volume from the pool's PG map.
pub(crate) async fn open_volume(
    client: &Arc<Client>,
    pool: &Arc<ReplicaPool>,
    name: &str,
    opening: Opening<'_>,
) -> anyhow::Result<Attached> {
    let Opening {
        attach_as, force, ..
    } = opening;
    let map = VolumeMap::fetch(client, name).await?;
    map.pool.rule.as_ref().context("pool without a rule")?;
    // Checked before the attach: a map that cannot be served is no reason to fence anyone.
    let sets = map.acting_sets()?;
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
        .map_err(|status| MetadataRefusal {
            what: "attach".into(),
            status,
        })?;
    tracing::info!(volume = name, epoch = attachment.attach_epoch, "attached");
    let epoch = attachment.attach_epoch;
    let expires = super::capability::install(pool, &attachment)?;
    match serve_attached(client, pool, name, &map, epoch, sets, opening).await {
        Ok(attached) => Ok(Attached {
            _renewal: super::capability::Renewal::start(
                Arc::clone(client),
                Arc::clone(pool),
                name.to_owned(),
                epoch,
                expires,
            ),
            ..attached
        }),
        Err(e) => {
            // Nobody serves it after all: let go, so that it shows as available (and the
            // rebuild agent may heal it) rather than held by a gateway that failed.
            detach_epoch(client, name, attach_as, epoch).await;
            Err(e)
        }
    }
}

/// Builds the attached volume from its map and makes it ready to serve: the replicas hold
/// it, the new epoch is installed on them, they agree.
async fn serve_attached(
    client: &Arc<Client>,
    pool: &Arc<ReplicaPool>,
    name: &str,
    map: &VolumeMap,
    attach_epoch: u64,
    (acting, node_of): (ActingSets, HashMap<SocketAddr, u64>),
    Opening {
        metrics,
        resync_pace_bytes_per_sec,
        ..
    }: Opening<'_>,
) -> anyhow::Result<Attached> {
    let volume = &map.volume;
    let rule = map.pool.rule.clone().context("pool without a rule")?;
    let node_of = Arc::new(RwLock::new(node_of));
    let config = ClientConfig {
        name: name.into(),
        volume: VolumeId(volume.id),
        size_bytes: volume.size_bytes,
        attach_epoch,
        min_replicas: rule.min_replicas as usize,
        below_min_wait_ms: BELOW_MIN_WAIT_MS_DEFAULT,
        removal_wait_ms: REMOVAL_WAIT_MS_DEFAULT,
        resync_pace_bytes_per_sec,
    };
    let superseded = Superseded::default();
    let observer = Arc::new(ClusterObserver {
        client: Arc::clone(client),
        volume: name.to_owned(),
        node_of: Arc::clone(&node_of),
        superseded: superseded.clone(),
        metrics: metrics.clone(),
    });
    let replicated = ReplicatedVolume::new(config, acting.clone(), observer, Arc::clone(pool))
        .context("set up the replicated volume")?;
    wait_until_replicas_hold(&replicated, &acting, rule.min_replicas as usize).await?;
    // A flush carries the new epoch to every replica, which persists it: from here on a gateway
    // holding an older attach is refused, not merely outranked in the metadata.
    replicated
        .flush()
        .await
        .map_err(|e| anyhow::anyhow!("install attach epoch {}: {e}", attach_epoch))?;
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
        attach_epoch,
        node_of,
        superseded,
        metrics,
        qos: super::qos::QosGate::new(map.volume.qos.as_ref()),
        scrub: Arc::new(tokio::sync::watch::channel(map.scrub_view()).0),
        _renewal: None,
    })
}

/// Which node serves each replica address; shared with the observer, refreshed with the map.
pub(crate) type NodeAddresses = Arc<RwLock<HashMap<SocketAddr, u64>>>;

/// The data addresses of every PG's acting set (its replicas that are not stale), in PG
/// order, and the node behind each address.
pub(super) fn acting_sets(
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

/// Waits until the replicas hold the volume at its recorded size (the storage agents create it
/// a moment after the metadata service does, and grow it a moment after a resize): all of
/// them, or, once `REPLICAS_GRACE_MS` have passed, at least `min_replicas` in every group. A
/// replica that is down then fails its first request and leaves the acting set like any
/// other; the gateway does not wait for a node that may never come back.
pub(super) async fn wait_until_replicas_hold(
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
            let holds = match volume.extent_versions(replica, 0, 1).await {
                Ok(_) => volume.replica_holds_size(replica).await,
                Err(e) => Err(e),
            };
            match holds {
                Ok(true) => {
                    ready.insert(replica);
                }
                Ok(false) => {
                    tracing::debug!(%replica, "replica not grown to the volume's size yet")
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
