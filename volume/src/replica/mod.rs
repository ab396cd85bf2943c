//! The replica server: serves the volumes of a node's [`ExtentStore`] to volume clients over
//! TCP (or, through [`ReplicaServer::serve_connection`], any byte stream), speaking the [`wire`](crate::wire) protocol.
//!
//! Per volume, beside the store's own files, a replica keeps two small records in
//! `DATA_DIR/replica/NAME/` (`NAME` is [`store_volume_name`] of the volume id):
//!
//! - `epoch`: the highest attach epoch seen ([`fence`]). Requests of an older epoch are
//!   answered [`Status::Fenced`](crate::wire::Status::Fenced), so a stale client can never
//!   overwrite data. With capability keys configured, a connection's requests reach the
//!   fence only for the volume and epoch it presented a capability for ([`grants`]), so no
//!   client raises an epoch the metadata service did not grant it.
//! - `versions`: the version `(attach_epoch, seq)` of each extent's last write ([`versions`]),
//!   for delta resync, answered by GET_EXTENT_VERSIONS.
//! - `intent`: which extents may hold writes no flush made durable yet ([`intent`]); what it
//!   marks when the replica starts after a power loss is reported *suspect* with the versions
//!   until rewritten.
//!
//! Per node, `DATA_DIR/replica/power` holds the boot the replica last ran in and its power
//! epoch ([`power`]), which PING answers.
//!
//! A replica grows when its volume is resized ([`ReplicaServer::grow_volume`]): `versions`
//! and `intent` first, the store's volume last, as the store's size is what admits a request.
//!
//! Code map: `connection` reads frames, runs each request as its own task and writes replies
//! in completion order (bounded in flight per connection); `execute` runs one request against
//! the store, the fence and the version table. Start at [`ReplicaServer::serve`].
//!
//! Invariants: a malformed frame closes its connection and nothing else; every range is
//! checked against the volume before the store sees it; a mutation's version is recorded only
//! after its data was written, and before its reply.

mod connection;
mod execute;
pub mod fence;
pub mod grants;
pub mod intent;
pub mod power;
pub mod versions;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::capability::CapabilityKeys;
use crate::sched::disk::DiskScheduler;
use crate::store::{CRC_OPEN, ExtentStore, LocalVolume, StoreError};
use crate::volume::BlockVolume;
use crate::wire::{ExtentVersion, VolumeId, WriteVersion};

pub use connection::Ending;
use fence::Fence;
use intent::IntentLog;
use power::Power;
use versions::VersionTable;

/// Requests read but not yet answered, per connection, by default.
pub const REQUESTS_IN_FLIGHT_MAX_DEFAULT: usize = 256;
/// Upper bound of [`ReplicaConfig::requests_in_flight_max`].
pub const REQUESTS_IN_FLIGHT_MAX_LIMIT: usize = 4096;
/// Pause after a failed `accept`, in milliseconds, so a persistent failure does not spin.
pub const ACCEPT_RETRY_DELAY_MS: u64 = 100;

/// Replica server configuration.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// Requests read but not yet answered per connection; the reader stops reading at this.
    pub requests_in_flight_max: usize,
    /// The cell keys whose attach capabilities admit an epoch ([`grants`]); the owner keeps
    /// this `Arc` to rotate them. `None`: no capability is checked and a request's epoch is
    /// taken on its word, as in simulations and for plain-TCP clusters.
    pub capabilities: Option<Arc<CapabilityKeys>>,
    /// Requests the disk scheduler lets reach the store at once ([`crate::sched::disk`]).
    pub disk_queue_depth: usize,
    /// Who may SCAN_READ: given the connection's authenticated principal, whether it may read
    /// any volume without an attach. `None`: anyone (simulations, plain-TCP clusters).
    pub scan_readers: Option<fn(&str) -> bool>,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX_DEFAULT,
            capabilities: None,
            disk_queue_depth: crate::sched::disk::DEPTH_DEFAULT,
            scan_readers: None,
        }
    }
}

/// Resolves once shutdown is requested; a dropped sender counts as a request.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The name under which a replicated volume's data lives in the extent store.
pub fn store_volume_name(id: VolumeId) -> String {
    format!("r-{id}")
}

/// One volume as a replica serves it: the store's volume, its fence, its versions and its
/// write intents.
pub struct ReplicaVolume {
    pub local: Arc<LocalVolume>,
    pub fence: Fence,
    pub versions: VersionTable,
    pub intent: IntentLog,
}

impl ReplicaVolume {
    /// Extents of the volume at its current size. The version and intent tables may have
    /// more, from a grow under way: they grow first.
    pub fn extent_count(&self) -> u64 {
        VersionTable::extents_of(self.local.size())
    }

    /// Versions of extents `first..first + count` (clamped to the volume).
    pub fn extent_versions(&self, first: u64, count: u64) -> Vec<WriteVersion> {
        self.extents(first, count)
            .into_iter()
            .map(|e| e.version)
            .collect()
    }

    /// Extents `first..first + count` (clamped to the volume) as GET_EXTENT_VERSIONS reports
    /// them.
    pub fn extents(&self, first: u64, count: u64) -> Vec<ExtentVersion> {
        let end = first.saturating_add(count).min(self.extent_count());
        let first = first.min(end);
        let versions = self.versions.get(first, end - first);
        let flags = self.intent.flags(first, end - first);
        versions
            .into_iter()
            .zip(flags)
            .map(|(version, (suspect, recent))| ExtentVersion {
                version,
                suspect,
                recent,
            })
            .collect()
    }
}

/// Serves one extent store's volumes to replica clients.
pub struct ReplicaServer {
    store: Arc<ExtentStore>,
    config: ReplicaConfig,
    volumes: std::sync::Mutex<HashMap<VolumeId, Arc<ReplicaVolume>>>,
    /// Held while a volume's replica state is opened, so it is opened once.
    opening: tokio::sync::Mutex<()>,
    /// Read (and raised, after a machine restart) on first use.
    power: tokio::sync::OnceCell<Power>,
    /// The turns of the store's disk, by class and volume.
    sched: Arc<DiskScheduler>,
}

impl ReplicaServer {
    pub fn new(store: Arc<ExtentStore>, config: ReplicaConfig) -> Arc<ReplicaServer> {
        assert!((1..=REQUESTS_IN_FLIGHT_MAX_LIMIT).contains(&config.requests_in_flight_max));
        let sched = DiskScheduler::new(config.disk_queue_depth);
        Arc::new(ReplicaServer {
            store,
            sched,
            config,
            volumes: std::sync::Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
            power: tokio::sync::OnceCell::new(),
        })
    }

    /// What the replica learned about its machine when it started (see [`power`]).
    pub async fn power(&self) -> io::Result<Power> {
        self.power
            .get_or_try_init(|| async {
                let dir = self.store.dir().join("replica");
                std::fs::create_dir_all(&dir)?;
                let p = power::open(self.store.disk(), &dir.join("power")).await?;
                if p.lost_at_start {
                    tracing::warn!(epoch = p.epoch, "the machine restarted since the replica last ran: writes that were not durable then are lost; their extents are suspect");
                }
                Ok(p)
            })
            .await
            .copied()
    }

    pub fn store(&self) -> &Arc<ExtentStore> {
        &self.store
    }

    /// The scheduler of the store's disk: its class and volume specs, and its counts.
    pub fn scheduler(&self) -> &Arc<DiskScheduler> {
        &self.sched
    }

    /// Makes the replica of volume `id` hold `size_bytes`, as the cluster's record of the
    /// volume says (the storage agent follows it): creates it if it does not exist, grows it if
    /// it is smaller (the volume was resized). A replica larger than that is refused
    /// ([`StoreError::Shrink`]), never shrunk.
    pub async fn ensure_volume(
        &self,
        id: VolumeId,
        size_bytes: u64,
    ) -> Result<Arc<LocalVolume>, StoreError> {
        let name = store_volume_name(id);
        match self.store.volume(&name).map(|v| v.size_bytes()) {
            Some(have) if have < size_bytes => self.grow_volume(id, size_bytes).await,
            Some(have) if have > size_bytes => Err(StoreError::Shrink {
                name,
                size: have,
                requested: size_bytes,
            }),
            _ => self.store.ensure_volume(&name, size_bytes).await,
        }
    }

    /// Grows the replica of volume `id` to `size_bytes` while it serves: its version and intent
    /// tables first, then the store's volume (see [`ExtentStore::grow_volume`]), whose size is
    /// what requests are checked against, so a request in the new range finds every table
    /// ready. A crash part-way leaves the old size; tables already grown are cut back when the
    /// replica opens again.
    pub async fn grow_volume(
        &self,
        id: VolumeId,
        size_bytes: u64,
    ) -> Result<Arc<LocalVolume>, StoreError> {
        let _opening = self.opening.lock().await;
        let name = store_volume_name(id);
        let local = self
            .store
            .volume(&name)
            .ok_or_else(|| StoreError::NotFound(name.clone()))?;
        if size_bytes > local.size_bytes() {
            let io = |what: &str| {
                let context = format!("grow the {what} of {name}");
                move |e| StoreError::io(context, e)
            };
            let replica = self
                .open_locked(id)
                .await
                .map_err(io("replica state"))?
                .ok_or_else(|| StoreError::NotFound(name.clone()))?;
            replica
                .versions
                .grow(size_bytes)
                .await
                .map_err(io("versions"))?;
            replica
                .intent
                .grow(size_bytes)
                .await
                .map_err(io("intents"))?;
        }
        self.store.grow_volume(&name, size_bytes).await
    }

    /// Deletes the replica of volume `id` (its data, fence, versions and intents) and frees
    /// its space; requests already under way finish on the unlinked files.
    pub async fn delete_volume(&self, id: VolumeId) -> Result<(), StoreError> {
        let _opening = self.opening.lock().await;
        self.volumes.lock().expect("volumes").remove(&id);
        self.sched.forget_volume(id.0);
        let name = store_volume_name(id);
        self.store.delete_volume(&name).await?;
        let dir = self.store.dir().join("replica").join(&name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("remove {}", dir.display()), e)),
        }
    }

    /// The ids of the replicated volumes the store holds.
    pub fn volume_ids(&self) -> Vec<VolumeId> {
        self.store
            .volumes()
            .iter()
            .filter_map(|v| {
                let hex = v.name().strip_prefix("r-")?;
                u64::from_str_radix(hex, 16).ok().map(VolumeId)
            })
            .collect()
    }

    /// Reads `[offset, offset + len)` of this node's replica of volume `id` for a computation
    /// on this node, behind a turn of the disk scheduler in `class` (as a SCAN_READ from the
    /// network would be), checking every block. At most one extent's worth.
    pub async fn read_local(
        &self,
        id: VolumeId,
        offset: u64,
        len: u32,
        class: crate::sched::class::Class,
    ) -> Result<bytes::Bytes, crate::volume::VolumeError> {
        use crate::volume::VolumeError;
        if len > crate::wire::PAYLOAD_MAX_BYTES {
            return Err(VolumeError::TooLarge {
                len: u64::from(len),
                max: u64::from(crate::wire::PAYLOAD_MAX_BYTES),
            });
        }
        let vol = self
            .volume(id)
            .await
            .map_err(|e| VolumeError::Io(e.to_string()))?
            .ok_or_else(|| VolumeError::Io(format!("this replica holds no volume {id}")))?;
        let _turn = self.scheduler().turn(class, id.0, u64::from(len)).await;
        vol.local.read(offset, len).await
    }

    /// The replica state of volume `id`, opened on first use; `None` if the store does not
    /// hold it.
    pub async fn volume(&self, id: VolumeId) -> io::Result<Option<Arc<ReplicaVolume>>> {
        if let Some(v) = self.volumes.lock().expect("volumes").get(&id) {
            return Ok(Some(Arc::clone(v)));
        }
        let _opening = self.opening.lock().await;
        self.open_locked(id).await
    }

    /// [`ReplicaServer::volume`] for a caller holding `opening`.
    async fn open_locked(&self, id: VolumeId) -> io::Result<Option<Arc<ReplicaVolume>>> {
        if let Some(v) = self.volumes.lock().expect("volumes").get(&id) {
            return Ok(Some(Arc::clone(v)));
        }
        let name = store_volume_name(id);
        let Some(local) = self.store.volume(&name) else {
            return Ok(None);
        };
        let dir = self.store.dir().join("replica").join(&name);
        std::fs::create_dir_all(&dir)?;
        let fence = Fence::open(Arc::clone(self.store.disk()), dir.join("epoch")).await?;
        let file = self.store.disk().open(&dir.join("versions"), CRC_OPEN)?;
        let versions = VersionTable::open(file, local.size()).await?;
        let power = self.power().await?;
        let file = self.store.disk().open(&dir.join("intent"), CRC_OPEN)?;
        let intent = IntentLog::open(file, local.size(), power.lost_at_start).await?;
        let suspect = intent.suspect_count();
        if suspect > 0 {
            tracing::warn!(volume = %id, extents = suspect, "extents that may have lost writes are suspect until copied from another replica");
        }
        let v = Arc::new(ReplicaVolume {
            local,
            fence,
            versions,
            intent,
        });
        self.volumes
            .lock()
            .expect("volumes")
            .insert(id, Arc::clone(&v));
        Ok(Some(v))
    }

    /// Serves replica clients on `listener` until `shutdown` turns true (or its sender is
    /// dropped). Connections then stop reading, finish what they read, and close. Aborting
    /// the task running this future drops every connection at once, like a crash.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let mut connections = JoinSet::new();
        let mut stop = shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
                        }
                        let server = Arc::clone(&self);
                        let stop = shutdown.clone();
                        connections.spawn(async move {
                            let (r, w) = stream.into_split();
                            // Plain TCP authenticates no one.
                            let ending = connection::serve(server, r, w, None, stop).await;
                            tracing::debug!(%peer, %ending, "replica connection closed");
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(ACCEPT_RETRY_DELAY_MS)).await;
                    }
                },
            }
        }
        drop(listener);
        while connections.join_next().await.is_some() {}
    }

    /// Serves one already accepted connection over any byte stream, as [`serve`] does each
    /// TCP connection: the seam through which a simulation runs the server over its own
    /// network, and a TLS accept loop over its streams. `peer` is the principal the transport
    /// authenticated (a TLS client certificate's), which a presented capability must name;
    /// `None` where nothing was authenticated. Returns why the connection ended.
    ///
    /// [`serve`]: ReplicaServer::serve
    pub async fn serve_connection<S>(
        self: Arc<Self>,
        stream: S,
        peer: Option<String>,
        shutdown: watch::Receiver<bool>,
    ) -> Ending
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        connection::serve(self, r, w, peer, shutdown).await
    }
}
