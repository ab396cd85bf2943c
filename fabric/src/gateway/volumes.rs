//! The volumes a gateway serves, attached on demand: a client's `NBD_OPT_GO` (or
//! `EXPORT_NAME`) for any volume of the cluster attaches it (a fencing epoch, the replicas
//! ready, the epoch installed), every connection to it holds a lease, and once the last lease
//! is gone for `detach_grace` the volume is flushed and detached. A client that comes back
//! within the grace period finds the same attachment. Volumes named with `--volume` are
//! attached at start and held for as long as the gateway runs.
//!
//! Each volume has a slot: its attachment (behind an async lock, so that concurrent opens of
//! one volume share one attach, and a detach never races an open) and its count of
//! connections (behind a plain lock, so that a lease can give itself back when dropped).
//! Attaching runs on a task of its own: a client that gives up mid-handshake does not
//! cancel an attach half done. Volumes are independent: one that is fenced, or that cannot
//! reach `min_replicas`, refuses its own clients and nobody else's.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use proto::meta as pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use volume::BlockVolume;
use volume::client::ReplicaPool;
use volume::nbd::{Described, ExportError, Exports, Listed, Opened, Peer, payload_max_of};

use super::Metered;
use super::attach::{Attached, MetadataRefusal, Opening, detach, open_volume};
use super::maps::{Stamps, watch_maps};
use super::qos::Limited;
use super::resync::resync_stale;
use crate::identity::ClusterTls;
use crate::meta::auth::Verb;
use crate::meta::client::Client;
use crate::meta::service::watch::WATCH_NAMES_MAX;
use crate::metrics::{VolumeLabels, VolumeMetrics};
use prometheus_client::metrics::gauge::Gauge;

/// How long a volume nobody uses stays attached, by default.
pub const DETACH_GRACE_MS_DEFAULT: u64 = 30_000;
/// How often idle volumes are looked for, at most; shorter grace periods look more often.
pub const IDLE_SCAN_MS_MAX: u64 = 1_000;
/// Volumes one gateway holds attached at once, by default. Past it, a new volume is refused
/// (the ones attached serve on).
pub const VOLUMES_MAX_DEFAULT: usize = 1024;
/// NBD connections to one volume at once, by default (QEMU and nbdcopy open a handful with
/// multi-connection; more is a client gone wrong, which must not starve the others).
pub const CONNECTIONS_PER_VOLUME_MAX_DEFAULT: usize = 64;
// The watch stream's name filter then always holds every attached volume.
const _: () = assert!(VOLUMES_MAX_DEFAULT <= WATCH_NAMES_MAX);

/// The gateway's limits on what it holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// How long a volume no client uses stays attached.
    pub detach_grace: Duration,
    pub volumes_max: usize,
    pub connections_per_volume_max: usize,
    /// A resync's fixed pace while clients do IO (0: governed by the nodes' schedulers).
    pub resync_pace_bytes_per_sec: u64,
    /// How often every PG of a served volume is scrubbed.
    pub scrub: crate::scrub::Intervals,
}

/// The gateway's volumes; cheap to clone, every clone the same set.
#[derive(Clone)]
pub(crate) struct Volumes(Arc<Inner>);

struct Inner {
    client: Arc<Client>,
    pool: Arc<ReplicaPool>,
    attach_as: String,
    metrics: VolumeMetrics,
    limits: Limits,
    /// Volumes attached now.
    attached: AtomicUsize,
    /// The export an empty NBD name selects: the first `--volume`, if any.
    default: Option<String>,
    /// What moved in the cluster, as the watch stream stamps it for the resync tasks.
    maps: Arc<watch::Sender<Stamps>>,
    /// The names of the attached volumes, which the watch stream follows.
    followed: watch::Sender<BTreeSet<String>>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// The gateway's own TLS: whose principals TLS clients are, and the revocations it
    /// follows (none: no client is checked).
    tls: Option<Arc<ClusterTls>>,
}

/// One volume's attachment and use.
struct Slot {
    name: String,
    live: tokio::sync::Mutex<Option<Live>>,
    usage: Mutex<Usage>,
    /// `fabric_volume_connections` and `fabric_volume_attached` of the volume.
    connections: Gauge,
    attached: Gauge,
}

#[derive(Debug, Default)]
struct Usage {
    connections: usize,
    /// Attached at start with `--volume`: held until the gateway stops.
    pinned: bool,
    /// Since when no connection uses the volume.
    idle_since: Option<Instant>,
}

/// An attached volume and the task following its map and resyncing its replicas.
struct Live {
    attached: Attached,
    export: Arc<dyn BlockVolume>,
    payload_max_bytes: u32,
    stop_resync: watch::Sender<bool>,
    resync: JoinHandle<()>,
    /// Its scheduled and requested scrubs; stops with the resync.
    scrub: JoinHandle<()>,
}

/// A connection's hold on a volume; dropping it gives the hold back.
struct Lease(Arc<Slot>);

impl Drop for Lease {
    fn drop(&mut self) {
        let mut usage = self.0.usage.lock().expect("volume usage");
        usage.connections -= 1;
        self.0.connections.dec();
        if usage.connections == 0 {
            usage.idle_since = Some(Instant::now());
        }
    }
}

impl Volumes {
    /// No volume attached yet. `default` is what an empty export name selects.
    pub(crate) fn new(
        client: Arc<Client>,
        pool: Arc<ReplicaPool>,
        attach_as: String,
        metrics: VolumeMetrics,
        limits: Limits,
        default: Option<String>,
        tls: Option<Arc<ClusterTls>>,
    ) -> Volumes {
        Volumes(Arc::new(Inner {
            client,
            pool,
            attach_as,
            metrics,
            limits,
            attached: AtomicUsize::new(0),
            default,
            maps: Arc::new(watch::channel(Stamps::default()).0),
            followed: watch::channel(BTreeSet::new()).0,
            slots: Mutex::new(HashMap::new()),
            tls,
        }))
    }

    /// Follows the watch stream for the attached volumes until the process ends.
    pub(crate) async fn follow_maps(self) {
        let names = self.0.followed.subscribe();
        watch_maps(Arc::clone(&self.0.client), names, Arc::clone(&self.0.maps)).await
    }

    /// Attaches `name` and holds it until [`shutdown`](Self::shutdown); with `force`, takes
    /// it from whoever holds it.
    pub(crate) async fn pin(&self, name: &str, force: bool) -> Result<(), ExportError> {
        let opened = self.0.acquire(name, force).await?;
        let slot = self.0.slot(name);
        slot.usage.lock().expect("volume usage").pinned = true;
        drop(opened);
        Ok(())
    }

    /// Detaches the volumes nobody has used for the grace period, until the process ends.
    pub(crate) async fn detach_idle(self) {
        let grace = self.0.limits.detach_grace;
        let scan = grace
            .min(Duration::from_millis(IDLE_SCAN_MS_MAX))
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(scan);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for slot in self.0.all_slots() {
                if slot.idle_for(grace) {
                    self.0.let_go(&slot, Some(grace)).await;
                }
            }
            self.0.forget_unused();
        }
    }

    /// Lets go of every volume: the resyncs stop, each volume is flushed and detached.
    /// Connections must be closed first.
    pub(crate) async fn shutdown(&self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        for slot in self.0.all_slots() {
            if let Some(e) = self.0.let_go(&slot, None).await {
                failed.push(format!("{}: {e}", slot.name));
            }
        }
        anyhow::ensure!(failed.is_empty(), "flush failed: {}", failed.join("; "));
        Ok(())
    }
}

impl Slot {
    /// Whether nobody has used the volume for `grace` (never true of a pinned one).
    fn idle_for(&self, grace: Duration) -> bool {
        let usage = self.usage.lock().expect("volume usage");
        !usage.pinned
            && usage.connections == 0
            && usage.idle_since.is_some_and(|t| t.elapsed() >= grace)
    }
}

impl Inner {
    fn slot(&self, name: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().expect("slots");
        Arc::clone(slots.entry(name.to_owned()).or_insert_with(|| {
            let labels = VolumeLabels {
                volume: name.to_owned(),
            };
            Arc::new(Slot {
                name: name.to_owned(),
                live: tokio::sync::Mutex::new(None),
                usage: Mutex::new(Usage::default()),
                connections: self.metrics.connections.get_or_create(&labels).clone(),
                attached: self.metrics.attached.get_or_create(&labels).clone(),
            })
        }))
    }

    /// Every slot, as it stands now.
    fn all_slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .lock()
            .expect("slots")
            .values()
            .cloned()
            .collect()
    }

    /// Drops the slots of detached volumes nobody is opening.
    fn forget_unused(&self) {
        // Under the slots lock nobody can pick a slot up; a count of one is the map's own.
        self.slots.lock().expect("slots").retain(|_, slot| {
            Arc::strong_count(slot) > 1 || slot.live.try_lock().map_or(true, |l| l.is_some())
        });
    }

    /// Opens `name` for one connection, attaching it first if nobody here holds it (taking
    /// it from another holder only with `force`).
    async fn acquire(self: &Arc<Self>, name: &str, force: bool) -> Result<Opened, ExportError> {
        let slot = self.slot(name);
        let mut live = slot.live.lock().await;
        if let Some(refusal) = live
            .as_ref()
            .and_then(|l| l.attached.superseded.refusal().map(str::to_owned))
        {
            // Another attach fenced this one. Its connections fail their writes; once they are
            // gone, a new client may try to attach it afresh.
            if slot.usage.lock().expect("volume usage").connections > 0 {
                return Err(ExportError::Refused(format!(
                    "volume {name} was taken over by another attach ({refusal}); this gateway no longer serves it"
                )));
            }
            if let Some(old) = live.take() {
                self.stop_following(&slot, old).await;
            }
        }
        if live.is_none() {
            let volumes_max = self.limits.volumes_max;
            if self.attached.load(Ordering::Relaxed) >= volumes_max {
                return Err(ExportError::Refused(format!(
                    "this gateway serves {volumes_max} volumes already (--volumes-max); detach one or use another gateway"
                )));
            }
            *live = Some(self.attach(&slot, force).await?);
        }
        let l = live.as_ref().expect("attached above");
        let mut usage = slot.usage.lock().expect("volume usage");
        let connections_max = self.limits.connections_per_volume_max;
        if usage.connections >= connections_max {
            return Err(ExportError::Refused(format!(
                "volume {name} has {connections_max} connections on this gateway already (--connections-per-volume-max)"
            )));
        }
        usage.connections += 1;
        usage.idle_since = None;
        slot.connections.inc();
        Ok(Opened {
            export: Described::volume(l.export.as_ref(), l.payload_max_bytes),
            volume: Arc::clone(&l.export),
            lease: Some(Box::new(Lease(Arc::clone(&slot)))),
        })
    }

    /// Attaches the slot's volume and starts following it: its resyncs, its record in the
    /// watch stream, the counts of what is attached.
    async fn attach(&self, slot: &Slot, force: bool) -> Result<Live, ExportError> {
        let name = slot.name.as_str();
        let started = Instant::now();
        let opening = Opening {
            attach_as: &self.attach_as,
            force,
            metrics: self.metrics.clone(),
            resync_pace_bytes_per_sec: self.limits.resync_pace_bytes_per_sec,
        };
        let attached = open_volume(&self.client, &self.pool, name, opening)
            .await
            .map_err(|e| self.refusal(name, &e))?;
        let inner = Arc::new(attached.volume.clone()) as Arc<dyn BlockVolume>;
        // Metered outside the limits: the latency counted is the one the client sees.
        let limited =
            Arc::new(Limited::new(inner, Arc::clone(&attached.qos))) as Arc<dyn BlockVolume>;
        let export = Arc::new(Metered::new(limited, self.metrics.clone())) as Arc<dyn BlockVolume>;
        let payload_max_bytes =
            payload_max_of(export.as_ref()).map_err(|e| ExportError::Unavailable(e.to_string()))?;
        self.followed.send_modify(|names| {
            names.insert(name.to_owned());
        });
        let (stop_resync, stop) = watch::channel(false);
        let scrub = tokio::spawn(super::scrub::scrub_when_due(
            attached.clone(),
            Arc::clone(&self.client),
            self.limits.scrub,
            stop.clone(),
        ));
        let resync = tokio::spawn(resync_stale(
            attached.clone(),
            Arc::clone(&self.client),
            self.maps.subscribe(),
            stop,
        ));
        self.attached.fetch_add(1, Ordering::Relaxed);
        slot.attached.set(1);
        let took = started.elapsed();
        self.metrics.attach_seconds.observe(took.as_secs_f64());
        tracing::info!(
            volume = name,
            epoch = attached.attach_epoch,
            took_ms = took.as_millis() as u64,
            "serving volume"
        );
        Ok(Live {
            attached,
            export,
            payload_max_bytes,
            stop_resync,
            resync,
            scrub,
        })
    }

    /// What a client is told when `name` cannot be attached.
    fn refusal(&self, name: &str, error: &anyhow::Error) -> ExportError {
        let status = error.downcast_ref::<MetadataRefusal>().map(|r| &r.status);
        match status.map(|s| s.code()) {
            Some(tonic::Code::NotFound) => {
                ExportError::Unavailable(format!("no volume named {name:?} in the cluster"))
            }
            Some(tonic::Code::FailedPrecondition) => ExportError::Refused(format!(
                "{}; to serve it from this gateway: fabricctl volume attach {name} --client {} --force",
                status.map_or("", |s| s.message()),
                self.attach_as
            )),
            _ => {
                tracing::warn!(volume = name, error = %format!("{error:#}"), "attach failed");
                ExportError::Unavailable(format!("volume {name} cannot be served now: {error:#}"))
            }
        }
    }

    /// Undoes what [`attach`](Self::attach) started: the resync ends (between rounds), the
    /// watch stream forgets the volume, the counts drop it. The attachment itself stays.
    async fn stop_following(&self, slot: &Slot, live: Live) -> Attached {
        let _ = live.stop_resync.send(true);
        let _ = live.resync.await;
        let _ = live.scrub.await;
        self.followed.send_modify(|names| {
            names.remove(&slot.name);
        });
        self.attached.fetch_sub(1, Ordering::Relaxed);
        slot.attached.set(0);
        live.attached
    }

    /// Flushes and detaches the slot's volume if it is attached and, with `grace`, still idle
    /// for that long. Returns the flush's failure, if it failed.
    async fn let_go(&self, slot: &Slot, grace: Option<Duration>) -> Option<String> {
        let mut live = slot.live.lock().await;
        if grace.is_some_and(|g| !slot.idle_for(g)) {
            return None;
        }
        let attached = self.stop_following(slot, live.take()?).await;
        let flushed = attached.volume.flush().await.err().map(|e| e.to_string());
        if let Some(e) = &flushed {
            tracing::warn!(volume = %slot.name, error = %e, "last flush before detaching failed");
        }
        if attached.superseded.refusal().is_none() {
            detach(&self.client, &attached, &self.attach_as).await;
        }
        if grace.is_some() {
            tracing::info!(volume = %slot.name, "no client for the grace period: detached");
        }
        flushed
    }

    /// The cluster's volumes, as `NBD_OPT_LIST` shows them.
    async fn list(&self) -> Result<Vec<Listed>, ExportError> {
        let reply = self
            .client
            .call(|mut c| async move { c.list_volumes(pb::ListVolumesRequest {}).await })
            .await
            .map_err(|s| {
                ExportError::Unavailable(format!("volumes not listed: {}", s.message()))
            })?;
        Ok(reply
            .volumes
            .into_iter()
            .map(|v| Listed {
                description: listing(&v, &self.attach_as),
                name: v.name,
            })
            .collect())
    }

    /// Size and limits of `name`: the attached volume's, or the cluster's record.
    async fn describe(&self, name: &str) -> Result<Described, ExportError> {
        let slot = self.slots.lock().expect("slots").get(name).cloned();
        if let Some(slot) = slot
            && let Ok(live) = slot.live.try_lock()
            && let Some(l) = live.as_ref()
        {
            return Ok(Described::volume(l.export.as_ref(), l.payload_max_bytes));
        }
        let get = pb::GetVolumeRequest { name: name.into() };
        let v = self
            .client
            .call(|mut c| {
                let get = get.clone();
                async move { c.get_volume(get).await }
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => {
                    ExportError::Unavailable(format!("no volume named {name:?} in the cluster"))
                }
                _ => ExportError::Unavailable(format!("volume {name}: {}", s.message())),
            })?;
        Ok(Described {
            name: name.to_owned(),
            description: volume::nbd::describe_volume(name),
            size_bytes: v.size_bytes,
            payload_max_bytes: volume::client::IO_SIZE_MAX_BYTES
                .min(volume::nbd::PAYLOAD_MAX_BYTES),
        })
    }
}

/// A volume's line in `NBD_OPT_LIST`: its size and pool, and who holds it if not this gateway.
fn listing(v: &pb::Volume, attach_as: &str) -> String {
    let gib = v.size_bytes as f64 / (1u64 << 30) as f64;
    let held = match v.attached_to.as_str() {
        "" => String::new(),
        holder if holder == attach_as => ", attached here".into(),
        holder if crate::meta::state::is_rebuild_agent(holder) => String::new(),
        holder => format!(", attached to {holder}"),
    };
    format!(
        "Fabric volume {}, {gib:.1} GiB in pool {}{held}",
        v.name, v.pool
    )
}

impl Volumes {
    async fn admit(&self, peer: &Peer, verb: Verb, name: &str) -> Result<(), ExportError> {
        let cluster = self.0.tls.as_ref().map(|t| t.cluster());
        super::clients::admit(&self.0.client, cluster, peer, verb, name).await
    }
}

impl Exports for Volumes {
    fn default_name(&self) -> Option<String> {
        self.0.default.clone()
    }

    /// A TLS client is cut once its certificate is revoked or the policy no longer lets it
    /// attach the volume.
    fn withdrawn(&self, peer: &Peer, name: &str) -> BoxFuture<'static, ()> {
        let Some(tls) = self.0.tls.clone() else {
            return Box::pin(std::future::pending());
        };
        Box::pin(super::clients::withdrawn(
            Arc::clone(&self.0.client),
            tls,
            peer.clone(),
            name.to_owned(),
        ))
    }

    /// A TLS client sees the volumes it may describe.
    fn list<'a>(&'a self, peer: &'a Peer) -> BoxFuture<'a, Result<Vec<Listed>, ExportError>> {
        Box::pin(async move {
            let mut shown = Vec::new();
            for listed in self.0.list().await? {
                if self
                    .admit(peer, Verb::VolumeGet, &listed.name)
                    .await
                    .is_ok()
                {
                    shown.push(listed);
                }
            }
            Ok(shown)
        })
    }

    fn describe<'a>(
        &'a self,
        peer: &'a Peer,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Described, ExportError>> {
        Box::pin(async move {
            self.admit(peer, Verb::VolumeGet, name).await?;
            self.0.describe(name).await
        })
    }

    fn open<'a>(
        &'a self,
        peer: &'a Peer,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Opened, ExportError>> {
        let inner = Arc::clone(&self.0);
        let name = name.to_owned();
        Box::pin(async move {
            self.admit(peer, Verb::VolumeAttach, &name).await?;
            // On a task of its own: the attach finishes even if the client leaves meanwhile
            // (its lease is then dropped, and the grace period starts).
            let what = name.clone();
            tokio::spawn(async move { inner.acquire(&name, false).await })
                .await
                .map_err(|e| ExportError::Unavailable(format!("attach of {what} failed: {e}")))?
        })
    }
}
