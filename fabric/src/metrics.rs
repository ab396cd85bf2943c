//! Telemetry: every process serves its metrics in the Prometheus text format (0.0.4) on
//! `--metrics-listen`, at `/metrics`. Metrics never go through Raft.
//!
//! [`Metrics`] is one registry per process; the parts of the process register what they own
//! ([`Metrics::node`], [`Metrics::volume`], ...) and scrape-time gauges are filled by the
//! `refresh` hooks just before each scrape (the Raft progress, the node counts, a store's
//! checksum errors), so nothing polls in the background.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A hook run before every scrape.
type Refresh = Box<dyn Fn() + Send + Sync>;

/// The registry of one process, with the hooks that bring its gauges up to date.
#[derive(Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
    refresh: Mutex<Vec<Refresh>>,
}

/// What a volume operation was.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum IoOp {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
}

impl EncodeLabelValue for IoOp {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        w.write_str(match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::Trim => "trim",
            IoOp::WriteZeroes => "write_zeroes",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeOpLabels {
    pub volume: String,
    pub op: IoOp,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    pub volume: String,
}

/// A volume's scrubs of one kind (`light` or `deep`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScrubLabels {
    pub volume: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// A gateway's metrics of its volumes.
#[derive(Clone)]
pub struct VolumeMetrics {
    pub ops: Family<VolumeOpLabels, Counter>,
    pub bytes: Family<VolumeOpLabels, Counter>,
    pub errors: Family<VolumeOpLabels, Counter>,
    pub latency: Family<VolumeOpLabels, Histogram>,
    pub in_flight: Family<VolumeLabels, Gauge>,
    pub removals: Family<VolumeLabels, Counter>,
    pub resync_bytes: Family<VolumeLabels, Counter>,
    /// Time spent in resync rounds that copied data (rounds that only confirmed replicas
    /// already current are left out), so that bytes over seconds is the rebuild rate.
    pub resync_seconds: Family<VolumeLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub link_timeouts: Family<VolumeLabels, Counter>,
    /// 1 while the gateway holds the volume attached.
    pub attached: Family<VolumeLabels, Gauge>,
    /// NBD connections open to the volume.
    pub connections: Family<VolumeLabels, Gauge>,
    /// Time from a client's open of a volume nobody here held to the volume serving.
    pub attach_seconds: Histogram,
    /// PG scrubs finished, bytes the replicas checked for them, and what they found.
    pub scrubs: Family<ScrubLabels, Counter>,
    pub scrub_bytes: Family<ScrubLabels, Counter>,
    pub scrub_errors: Family<ScrubLabels, Counter>,
    pub scrub_repaired: Family<ScrubLabels, Counter>,
    pub scrub_unrepaired: Family<ScrubLabels, Counter>,
}

impl Default for VolumeMetrics {
    fn default() -> VolumeMetrics {
        VolumeMetrics {
            ops: Family::default(),
            bytes: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(|| {
                // 20 µs to about 10 s.
                Histogram::new(exponential_buckets(0.000_02, 2.0, 20))
            }),
            in_flight: Family::default(),
            removals: Family::default(),
            resync_bytes: Family::default(),
            resync_seconds: Family::default(),
            link_timeouts: Family::default(),
            attached: Family::default(),
            connections: Family::default(),
            // 5 ms to about 40 s.
            attach_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            scrubs: Family::default(),
            scrub_bytes: Family::default(),
            scrub_errors: Family::default(),
            scrub_repaired: Family::default(),
            scrub_unrepaired: Family::default(),
        }
    }
}

impl VolumeMetrics {
    /// Creates every series of `volume` at zero, so that a scrape shows them (and a rate over
    /// them starts) before the first event.
    pub fn declare(&self, volume: &str) {
        let v = VolumeLabels {
            volume: volume.to_owned(),
        };
        for op in [
            IoOp::Read,
            IoOp::Write,
            IoOp::Flush,
            IoOp::Trim,
            IoOp::WriteZeroes,
        ] {
            let l = VolumeOpLabels {
                volume: volume.to_owned(),
                op,
            };
            drop(self.ops.get_or_create(&l));
            drop(self.bytes.get_or_create(&l));
            drop(self.errors.get_or_create(&l));
            drop(self.latency.get_or_create(&l));
        }
        drop(self.in_flight.get_or_create(&v));
        drop(self.removals.get_or_create(&v));
        drop(self.resync_bytes.get_or_create(&v));
        drop(self.resync_seconds.get_or_create(&v));
        drop(self.link_timeouts.get_or_create(&v));
        drop(self.attached.get_or_create(&v));
        drop(self.connections.get_or_create(&v));
    }
}

/// A metadata member's metrics.
#[derive(Clone, Default)]
pub struct MemberMetrics {
    pub term: Gauge,
    pub last_log_index: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub snapshot_index: Gauge,
    pub leader: Gauge,
    /// Heartbeats this member took while leading.
    pub heartbeats: Counter,
    /// Nodes by state (`up`, `down`, `out`), as the applied state records them.
    pub nodes: Family<StateLabels, Gauge>,
    /// Transitions the failure detector committed, by the state entered.
    pub transitions: Family<StateLabels, Counter>,
    /// The audit log: entries ever written, entries held, calls refused because it was full,
    /// and its newest checkpoint.
    pub audit_entries: Gauge,
    pub audit_held: Gauge,
    pub audit_refused_full: Gauge,
    /// Refused calls counted into a later entry rather than written one by one.
    pub audit_refusals_counted: Gauge,
    pub audit_checkpoint_size: Gauge,
    pub audit_checkpoint_time: Gauge,
    /// Drifted items by class (`auto-repair`, `alert-only`, `needs-approval`), on the leader.
    pub drift: Family<ClassLabels, Gauge>,
}

/// A class (of drift, or of a disk's work), as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

/// A storage node's metrics.
#[derive(Clone, Default)]
pub struct StorageMetrics {
    pub checksum_errors: Gauge,
    pub volumes: Gauge,
    pub heartbeats: Gauge,
    /// The disk scheduler's turns and bytes by class of work, and how many came by
    /// reservation.
    pub sched_ios: Family<ClassLabels, Gauge>,
    pub sched_bytes: Family<ClassLabels, Gauge>,
    pub sched_reserved_ios: Family<ClassLabels, Gauge>,
    /// The recovery limit its governor set, bytes per second (0: none).
    pub recovery_limit: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Runs `hook` before every scrape.
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.refresh.lock().expect("metrics").push(Box::new(hook));
    }

    /// Registers a metadata member's metrics.
    pub fn register_member(&self, m: &MemberMetrics) {
        let mut r = self.registry.lock().expect("metrics");
        r.register("fabric_raft_term", "Current Raft term", m.term.clone());
        r.register(
            "fabric_raft_last_log_index",
            "Index of the last entry in this member's log",
            m.last_log_index.clone(),
        );
        r.register(
            "fabric_raft_commit_index",
            "Index of the last entry known committed",
            m.commit_index.clone(),
        );
        r.register(
            "fabric_raft_applied_index",
            "Index of the last entry applied to the state machine",
            m.applied_index.clone(),
        );
        r.register(
            "fabric_raft_snapshot_index",
            "Index covered by the current snapshot",
            m.snapshot_index.clone(),
        );
        r.register(
            "fabric_raft_leader",
            "1 while this member leads",
            m.leader.clone(),
        );
        r.register(
            "fabric_heartbeats",
            "Storage node heartbeats this member took as leader",
            m.heartbeats.clone(),
        );
        r.register(
            "fabric_nodes",
            "Storage nodes by state (up, down, out)",
            m.nodes.clone(),
        );
        r.register(
            "fabric_liveness_transitions",
            "Node transitions the failure detector committed, by the state entered",
            m.transitions.clone(),
        );
        r.register(
            "fabric_audit_entries",
            "Entries ever written to the audit log (its tree size)",
            m.audit_entries.clone(),
        );
        r.register(
            "fabric_audit_entries_held",
            "Audit entries the log holds (older ones are pruned behind a checkpoint)",
            m.audit_held.clone(),
        );
        r.register(
            "fabric_audit_refused_full",
            "Calls this member refused because the audit log was full",
            m.audit_refused_full.clone(),
        );
        r.register(
            "fabric_audit_refusals_counted",
            "Refused calls this member counted into a later audit entry (past a principal's \
             rate) rather than wrote one by one",
            m.audit_refusals_counted.clone(),
        );
        r.register(
            "fabric_audit_checkpoint_size",
            "Tree size of the newest signed audit checkpoint",
            m.audit_checkpoint_size.clone(),
        );
        r.register(
            "fabric_drift_items",
            "Items of nodes that differ from their desired state, by class (leader only)",
            m.drift.clone(),
        );
        r.register(
            "fabric_audit_checkpoint_timestamp_seconds",
            "When the newest audit checkpoint was signed, unix seconds",
            m.audit_checkpoint_time.clone(),
        );
    }

    /// Registers a storage node's metrics.
    pub fn register_storage(&self, m: &StorageMetrics) {
        let mut r = self.registry.lock().expect("metrics");
        r.register(
            "fabric_store_checksum_errors",
            "Blocks whose crc32c did not match on read",
            m.checksum_errors.clone(),
        );
        r.register(
            "fabric_store_volumes",
            "Replicas the store holds",
            m.volumes.clone(),
        );
        r.register(
            "fabric_agent_heartbeats",
            "Heartbeats the leader accepted from this node",
            m.heartbeats.clone(),
        );
        r.register(
            "fabric_sched_ios",
            "IOs the disk scheduler gave a turn, by class of work",
            m.sched_ios.clone(),
        );
        r.register(
            "fabric_sched_bytes",
            "Bytes of the IOs the disk scheduler gave a turn, by class of work",
            m.sched_bytes.clone(),
        );
        r.register(
            "fabric_sched_reserved_ios",
            "IOs given a turn to meet a reservation, by class of work",
            m.sched_reserved_ios.clone(),
        );
        r.register(
            "fabric_sched_recovery_limit_bytes_per_second",
            "Recovery limit that keeps client latency within its target (0: none)",
            m.recovery_limit.clone(),
        );
    }

    /// Registers a gateway's per-volume metrics.
    pub fn register_volumes(&self, m: &VolumeMetrics) {
        let mut r = self.registry.lock().expect("metrics");
        r.register(
            "fabric_volume_ops",
            "Volume operations served",
            m.ops.clone(),
        );
        r.register(
            "fabric_volume_bytes",
            "Bytes read or written",
            m.bytes.clone(),
        );
        r.register(
            "fabric_volume_errors",
            "Volume operations that failed",
            m.errors.clone(),
        );
        r.register(
            "fabric_volume_latency_seconds",
            "Latency of volume operations",
            m.latency.clone(),
        );
        r.register(
            "fabric_volume_in_flight",
            "Volume operations under way (queue depth)",
            m.in_flight.clone(),
        );
        r.register(
            "fabric_acting_set_removals",
            "Replicas taken out of an acting set after a failed write",
            m.removals.clone(),
        );
        r.register(
            "fabric_resync_bytes",
            "Bytes copied to stale or rebuilt replicas",
            m.resync_bytes.clone(),
        );
        r.register(
            "fabric_resync_seconds",
            "Seconds spent in resync rounds that copied data",
            m.resync_seconds.clone(),
        );
        r.register(
            "fabric_replica_link_timeouts",
            "Replica requests that timed out",
            m.link_timeouts.clone(),
        );
        r.register(
            "fabric_volume_attached",
            "1 while this gateway holds the volume attached",
            m.attached.clone(),
        );
        r.register(
            "fabric_volume_connections",
            "NBD connections open to the volume",
            m.connections.clone(),
        );
        r.register(
            "fabric_volume_attach_seconds",
            "Time from a client's open of a volume not attached here to the volume serving",
            m.attach_seconds.clone(),
        );
        r.register(
            "fabric_scrubs",
            "Scrubs of a volume's PGs finished",
            m.scrubs.clone(),
        );
        r.register(
            "fabric_scrub_bytes",
            "Bytes the replicas read and checked for scrubs",
            m.scrub_bytes.clone(),
        );
        r.register(
            "fabric_scrub_errors",
            "Bad blocks and divergent copies scrubs found",
            m.scrub_errors.clone(),
        );
        r.register(
            "fabric_scrub_repaired",
            "Bad blocks and divergent copies scrubs repaired from a good copy",
            m.scrub_repaired.clone(),
        );
        r.register(
            "fabric_scrub_unrepaired",
            "Bad blocks and divergent copies scrubs found no good copy for, or failed to repair",
            m.scrub_unrepaired.clone(),
        );
    }

    /// Registers one gauge of its own.
    pub fn register_gauge(&self, name: &str, help: &str, gauge: Gauge) {
        self.registry
            .lock()
            .expect("metrics")
            .register(name, help, gauge);
    }

    /// The text exposition, after running the scrape hooks.
    pub fn encode(&self) -> String {
        for hook in self.refresh.lock().expect("metrics").iter() {
            hook();
        }
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics");
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Serves `metrics` at `/metrics` on `listen` until the runtime ends; returns the bound
/// address. With `tls`, off loopback, the endpoint takes mutual TLS only (see
/// `metrics_listener`); on loopback, or without a certificate, plain HTTP.
pub async fn serve(
    metrics: Arc<Metrics>,
    listen: SocketAddr,
    tls: Option<Arc<crate::identity::ClusterTls>>,
) -> std::io::Result<SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    match tls.filter(|_| !listen.ip().is_loopback()) {
        Some(tls) => {
            spawn_endpoint(
                crate::metrics_listener::TlsListener::new(listener, tls)?,
                app,
            );
            tracing::info!(%bound, "serving metrics at /metrics over mutual TLS");
        }
        None => {
            spawn_endpoint(listener, app);
            tracing::info!(%bound, "serving metrics at /metrics");
        }
    }
    Ok(bound)
}

/// Serves `app` on `listener` until the runtime ends.
fn spawn_endpoint<L: axum::serve::Listener>(listener: L, app: axum::Router)
where
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
}
