//! `fabricd gateway`: the volume driver a hypervisor host runs, as a process of its own. It
//! serves any volume of the cluster over NBD: a client's first `NBD_OPT_GO` for a volume
//! attaches it (a fencing epoch from the metadata service; a volume another gateway holds is
//! refused until the operator moves it), the gateway builds its acting sets from its pool's
//! PG map and the nodes' data addresses, and the last client leaving detaches it after a grace
//! period (`volumes`). Storage nodes can die while the export stays up.
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
mod capability;
mod clients;
mod maps;
mod metered;
pub use metered::Metered;
mod observer;
mod pace;
mod qos;
mod resync;
mod scrub;
mod volumes;

use crate::metrics::{Metrics, VolumeMetrics};
pub(crate) use attach::{Attached, Opening, detach, open_volume};
pub(crate) use resync::resync_round;
pub use volumes::{
    CONNECTIONS_PER_VOLUME_MAX_DEFAULT, DETACH_GRACE_MS_DEFAULT, VOLUMES_MAX_DEFAULT,
};
use volumes::{Limits, Volumes};

use crate::meta::service::watch::WATCH_NAMES_MAX;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use volume::client::{PoolConfig, REMOVAL_WAIT_MS_DEFAULT};
use volume::nbd::NbdTls;

use crate::identity::Transport;

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

/// How a gateway's resyncs keep from hurting clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ResyncPace {
    Fixed,
    Governed,
}

/// Flags of `fabricd gateway`.
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Metadata members to ask, comma-separated gRPC addresses.
    #[arg(long, value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// A volume to attach at start and hold until the gateway stops (repeat for more); the
    /// first is what an empty NBD export name selects. Any other volume of the cluster is
    /// attached when a client first asks for it.
    #[arg(long = "volume")]
    pub volumes: Vec<String>,
    /// Where to accept NBD clients.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd_listen: SocketAddr,
    /// Name to attach as (default: `gateway-` and the NBD address, stable across restarts).
    #[arg(long)]
    pub client_name: Option<String>,
    /// Take the `--volume`s over from another attachment; its writes are refused from then on.
    #[arg(long)]
    pub force: bool,
    /// How long a volume no client uses stays attached; a client reconnecting within it
    /// finds the same attachment.
    #[arg(long, default_value_t = DETACH_GRACE_MS_DEFAULT)]
    pub detach_grace_ms: u64,
    /// Volumes held attached at once; past it a client's open of another is refused.
    #[arg(long, default_value_t = VOLUMES_MAX_DEFAULT,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=WATCH_NAMES_MAX as u64))]
    pub volumes_max: usize,
    /// NBD connections to one volume at once.
    #[arg(long, default_value_t = CONNECTIONS_PER_VOLUME_MAX_DEFAULT,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub connections_per_volume_max: usize,
    /// How long a metadata call keeps retrying while no member can serve it (a removal that
    /// gives up is tried again later; shortened in tests of long metadata outages).
    #[arg(long, default_value_t = CALL_RETRY_DEADLINE_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub metadata_retry_deadline_ms: u64,
    /// Serve Prometheus metrics at http://IP:PORT/metrics.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// How a resync keeps from hurting clients: `fixed` copies at most 256 MiB/s while the
    /// volume's clients do IO; `governed` paces every resync of the gateway to keep its
    /// clients' p99 within 1.2 x their p99 without recovery (beside the storage nodes' disk
    /// schedulers, which do the same for each disk).
    #[arg(long, value_enum, default_value_t = ResyncPace::Governed)]
    pub resync_pace: ResyncPace,
    /// Every PG of a served volume is scrubbed (each block checked against its checksum on
    /// every replica) once in this many seconds; 0: only when asked (`fabricctl scrub start`).
    #[arg(long, default_value_t = crate::scrub::schedule::LIGHT_INTERVAL_DEFAULT_S)]
    pub scrub_interval_s: u64,
    /// Every PG is deep-scrubbed (the replicas' versions and contents compared too) once in
    /// this many seconds; 0: only when asked.
    #[arg(long, default_value_t = crate::scrub::schedule::DEEP_INTERVAL_DEFAULT_S)]
    pub deep_scrub_interval_s: u64,
    /// The gateway's certificate directory (`chain.pem`, `key.pem`, `ca.pem`, as `fabricctl
    /// cert issue gateway NAME` writes it): the identity it attaches volumes and dials
    /// replicas with, over mutual TLS.
    #[arg(long, required = true)]
    pub cert_dir: std::path::PathBuf,
    /// What NBD clients must do: `auto` takes only NBD_OPT_STARTTLS clients with a
    /// certificate of the cluster, except on loopback, which also takes the host's own
    /// plaintext clients; `required` takes TLS clients only, on any address; `plaintext`
    /// serves without TLS on any address (explicitly, for a trusted network).
    #[arg(long, value_enum, default_value_t = NbdTlsMode::Auto)]
    pub nbd_tls: NbdTlsMode,
}

/// `--nbd-tls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NbdTlsMode {
    Auto,
    Required,
    Plaintext,
}

/// What the NBD listener asks of clients: TLS with a certificate of the cluster, except on
/// loopback (where the host's own clients may also come in plaintext) or where the operator
/// asked otherwise.
fn nbd_tls(transport: &Transport, listen: SocketAddr, mode: NbdTlsMode) -> NbdTls {
    let Some(tls) = transport.tls() else {
        return NbdTls::Off;
    };
    match (mode, listen.ip().is_loopback()) {
        (NbdTlsMode::Plaintext, _) => NbdTls::Off,
        (NbdTlsMode::Auto, true) => NbdTls::Optional(tls.server.config()),
        (NbdTlsMode::Auto, false) | (NbdTlsMode::Required, _) => {
            NbdTls::Required(tls.server.config())
        }
    }
}

/// Serves volumes until SIGINT or SIGTERM, then flushes and detaches them.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let mut stop = crate::dev::StopSignals::install();
    let transport = Transport::load(&args.cert_dir).with_context(|| {
        format!(
            "load the gateway's certificate from {} (issue one with `fabricctl cert issue \
             gateway NAME --ca-dir CA --out {}`)",
            args.cert_dir.display(),
            args.cert_dir.display()
        )
    })?;
    let mut client = Client::new(args.endpoints.clone(), transport.clone());
    client.retry_deadline = Duration::from_millis(args.metadata_retry_deadline_ms);
    client.attempt_deadline = Duration::from_millis(METADATA_ATTEMPT_DEADLINE_MS);
    let client = Arc::new(client);
    // One pool for every volume: links to a node, and the copy budget towards it, are shared.
    let pool = crate::replica_dial::replica_pool(&transport, PoolConfig::default())
        .context("replica pool")?;
    let attach_as = args
        .client_name
        .clone()
        .unwrap_or_else(|| format!("gateway-{}", args.nbd_listen));
    let volume_metrics = VolumeMetrics::default();
    let recovery_limit = prometheus_client::metrics::gauge::Gauge::default();
    if let Some(listen) = args.metrics_listen {
        let metrics = Metrics::new();
        metrics.register_volumes(&volume_metrics);
        metrics.register_gauge(
            "fabric_gateway_recovery_limit_bytes_per_second",
            "The rate the gateway's resyncs copy at, as its governor set it (0: none)",
            recovery_limit.clone(),
        );
        let bound = crate::metrics::serve(metrics, listen, transport.tls().cloned())
            .await
            .with_context(|| format!("serve metrics on {listen}"))?;
        println!("gateway serving metrics at http://{bound}/metrics");
    }
    let mut background = tokio::task::JoinSet::new();
    if args.resync_pace == ResyncPace::Governed {
        background.spawn(pace::govern(Arc::clone(&pool), recovery_limit));
    }
    let volumes = Volumes::new(
        Arc::clone(&client),
        pool,
        attach_as.clone(),
        volume_metrics,
        Limits {
            detach_grace: Duration::from_millis(args.detach_grace_ms),
            volumes_max: args.volumes_max,
            connections_per_volume_max: args.connections_per_volume_max,
            resync_pace_bytes_per_sec: match args.resync_pace {
                ResyncPace::Fixed => volume::client::RESYNC_BYTES_PER_SEC_MAX,
                ResyncPace::Governed => 0,
            },
            scrub: crate::scrub::Intervals {
                light_ms: args.scrub_interval_s.saturating_mul(1000),
                deep_ms: args.deep_scrub_interval_s.saturating_mul(1000),
            },
        },
        args.volumes.first().cloned(),
        transport.tls().cloned(),
    );
    background.spawn(volumes.clone().follow_maps());
    if let Some(tls) = transport.tls() {
        background.spawn(crate::identity::rotation::follow_files(Arc::clone(tls)));
        background.spawn(crate::meta::trust_follow::follow_client(
            Arc::clone(&client),
            Arc::clone(tls),
        ));
    }
    // `--force` takes the named volumes over, at start; on demand, a volume held elsewhere
    // is refused until the operator moves it here.
    for name in &args.volumes {
        volumes
            .pin(name, args.force)
            .await
            .map_err(|e| anyhow::anyhow!("open volume {name}: {e}"))?;
    }
    background.spawn(volumes.clone().detach_idle());

    let tls = nbd_tls(&transport, args.nbd_listen, args.nbd_tls);
    let server = volume::nbd::NbdServer::with_exports(
        Arc::new(volumes.clone()),
        volume::nbd::NbdConfig::default(),
    )
    .context("configure NBD server")?
    .with_tls(tls);
    let server = Arc::new(server);
    let tcp = tokio::net::TcpListener::bind(args.nbd_listen)
        .await
        .with_context(|| format!("listen on {}", args.nbd_listen))?;
    let addr = tcp.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(Arc::clone(&server).serve_tcp(tcp, stop_rx));
    for name in &args.volumes {
        println!("gateway serving replicated volume {name} at nbd://{addr}/{name}");
    }
    println!("gateway serving any volume of the cluster at nbd://{addr}/NAME, as {attach_as}");
    stop.wait().await;
    tracing::info!("gateway stopping: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    let graceful = async {
        let _ = serving.await;
        background.shutdown().await;
        volumes.shutdown().await
    };
    // With its nodes gone, the last flush and detach retry for tens of seconds: a second
    // signal ends the wait (what was acknowledged is on the replicas already).
    tokio::select! {
        done = graceful => done,
        _ = stop.wait() => anyhow::bail!(
            "a second stop signal came before the volumes were flushed and detached"
        ),
    }
}
