//! `fabricd dev`: a local node that serves volumes over NBD from one data directory, or with
//! `--nodes N` a local cluster of processes: N storage nodes, the first 3 (or 5) of which are
//! also the metadata group's voters, and a gateway serving the volumes, 3-way replicated
//! across racks, over NBD.
//!
//! The single node's store lives in `DATA_DIR/node-0`, the cluster's nodes in
//! `DATA_DIR/node-1..N`, the gateway's log in `DATA_DIR/gateway`.

use std::sync::Arc;

use anyhow::Context;
use volume::BlockVolume;
use volume::io::Disk;
use volume::store::{ExtentStore, StoreError};

use crate::config::{DevConfig, IoEngine};

/// Why `run` stopped, for the caller's exit code.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    DataDirLocked(StoreError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Opens the disk for the configured engine; io_uring falls back to the portable engine when
/// the kernel refuses it (disabled by sysctl, seccomp), with a log line saying so.
pub fn open_disk(engine: IoEngine, name: &str) -> anyhow::Result<Arc<dyn Disk>> {
    match engine {
        IoEngine::Uring => match volume::io::uring::UringDisk::new(name) {
            Ok(d) => Ok(Arc::new(d)),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable, using the portable engine");
                Ok(Arc::new(volume::io::portable::PortableDisk::new(name)))
            }
        },
        IoEngine::Portable => Ok(Arc::new(volume::io::portable::PortableDisk::new(name))),
    }
}

/// Runs the dev node until Ctrl-C or SIGTERM.
pub async fn run(config: DevConfig) -> Result<(), DevError> {
    if let Some(n) = config.nodes {
        return run_cluster(&config, n).await.map_err(DevError::Other);
    }
    let mut stop = StopSignals::install();
    let node_dir = config.data_dir.join("node-0");
    let disk = open_disk(config.io_engine, &node_dir.display().to_string())?;
    let store = match ExtentStore::open(&node_dir, disk).await {
        Ok(s) => s,
        Err(e @ StoreError::DataDirLocked(_)) => return Err(DevError::DataDirLocked(e)),
        Err(e) => return Err(anyhow::Error::new(e).context("open extent store").into()),
    };
    let mut exports: Vec<Arc<dyn BlockVolume>> = Vec::new();
    for spec in &config.volumes {
        let vol = store
            .ensure_volume(&spec.name, spec.size_bytes)
            .await
            .with_context(|| format!("open volume {}", spec.name))?;
        exports.push(vol);
    }

    // The single node serves NBD with its own certificate: TLS clients present one of the
    // data directory's CA (the administrator's is made), plaintext ones are the host's own
    // on loopback, as the gateway does.
    let pki = crate::identity::dev_pki::DevPki::ensure(&config.data_dir)
        .context("create the dev node's CA")?;
    let admin = pki
        .ensure_admin()
        .context("issue the administrator's certificate")?;
    let tls = Arc::new(
        crate::identity::ClusterTls::load(
            &pki.ensure_gateway(crate::meta::launch::DEV_GATEWAY)
                .context("issue the node's certificate")?,
        )
        .context("load the node's certificate")?,
    );
    if let Some(listen) = config.metrics_listen {
        let metrics = crate::metrics::Metrics::new();
        let volumes = crate::metrics::VolumeMetrics::default();
        metrics.register_volumes(&volumes);
        let store_errors = Arc::clone(store.stats());
        let errors = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        metrics.register_gauge(
            "fabric_store_checksum_errors",
            "Blocks whose crc32c did not match on read",
            errors.clone(),
        );
        metrics.on_scrape(move || {
            errors.set(i64::try_from(store_errors.checksum_errors()).unwrap_or(i64::MAX));
        });
        exports = exports
            .into_iter()
            .map(|v| {
                Arc::new(crate::gateway::Metered::new(v, volumes.clone())) as Arc<dyn BlockVolume>
            })
            .collect();
        let bound = crate::metrics::serve(metrics, listen, Some(Arc::clone(&tls)))
            .await
            .with_context(|| format!("serve metrics on {listen}"))?;
        println!("serving metrics at http://{bound}/metrics");
    }
    let nbd_tls = match config.nbd_listen.ip().is_loopback() {
        true => volume::nbd::NbdTls::Optional(tls.server.config()),
        false => volume::nbd::NbdTls::Required(tls.server.config()),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = volume::nbd::NbdServer::new(exports.clone(), volume::nbd::NbdConfig::default())
        .context("configure NBD server")?
        .with_tls(nbd_tls);
    let server = Arc::new(server);
    let tcp = tokio::net::TcpListener::bind(config.nbd_listen)
        .await
        .with_context(|| format!("listen on {}", config.nbd_listen))?;
    let addr = tcp.local_addr().context("read listen address")?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(Arc::clone(&server).serve_tcp(tcp, stop_rx.clone()));
    if let Some(path) = &config.nbd_unix {
        let _ = std::fs::remove_file(path);
        let unix = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("listen on {}", path.display()))?;
        tasks.spawn(Arc::clone(&server).serve_unix(unix, stop_rx.clone()));
    }

    for v in &exports {
        println!(
            "serving volume {} ({} bytes) at nbd://{addr}/{}",
            v.name(),
            v.size(),
            v.name()
        );
    }
    if let Some(path) = &config.nbd_unix {
        println!(
            "also at nbd+unix:///{}?socket={}",
            exports[0].name(),
            path.display()
        );
    }
    println!(
        "over TLS: nbdinfo 'nbds://{addr}/{}?tls-certificates={}'",
        exports[0].name(),
        admin.display()
    );
    println!(
        "try: nbdinfo nbd://{addr}/{}   (Ctrl-C stops)",
        exports[0].name()
    );

    stop.wait().await;
    tracing::info!("stopping: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    for v in &exports {
        v.flush()
            .await
            .map_err(|e| anyhow::anyhow!("flush {}: {e}", v.name()))?;
    }
    if let Some(path) = &config.nbd_unix {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Runs N node processes and a gateway until Ctrl-C or SIGTERM, or until the gateway exits.
async fn run_cluster(config: &DevConfig, nodes: u32) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut stop = StopSignals::install();
    let mut cluster = crate::meta::launch::DevCluster::start(
        &config.data_dir,
        nodes,
        config.nodes_per_rack,
        config.voters,
        config.nbd_listen,
        config.metrics_listen,
        config.two_person,
    )
    .await
    .context("start the nodes")?;
    let addrs: Vec<&str> = cluster.members.iter().map(|(_, a)| a.as_str()).collect();
    println!(
        "{nodes} storage nodes; metadata group of {} voters at {}",
        addrs.len(),
        addrs.join(",")
    );
    let volumes: Vec<(String, u64)> = config
        .volumes
        .iter()
        .map(|v| (v.name.clone(), v.size_bytes))
        .collect();
    if let Err(e) = cluster
        .start_gateway(
            &config.data_dir,
            &volumes,
            config.nbd_listen,
            config.metrics_listen,
            config.resync_pace,
        )
        .await
    {
        cluster.stop();
        return Err(e.context("start the gateway"));
    }
    let ready = wait_listening(config.nbd_listen, &mut cluster).await;
    if let Err(e) = ready {
        cluster.stop();
        return Err(e);
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "the gateway is serving"
    );
    for (name, size) in &volumes {
        println!(
            "serving volume {name} ({size} bytes, replicated) at nbd://{}/{name}",
            config.nbd_listen
        );
    }
    let admin = config.data_dir.join(crate::identity::dev_pki::ADMIN_DIR);
    if let Some((name, _)) = volumes.first() {
        println!(
            "over TLS: nbdinfo 'nbds://{}/{name}?tls-certificates={}'",
            config.nbd_listen,
            admin.display()
        );
        println!(
            "     or: qemu-img info --object tls-creds-x509,id=tls0,endpoint=client,dir={} \\\n         --image-opts driver=nbd,host={},port={},export={name},tls-creds=tls0",
            admin.display(),
            config.nbd_listen.ip(),
            config.nbd_listen.port()
        );
    }
    println!(
        "the administrator's certificate (cluster-admin) is in {}; every port takes mutual TLS",
        admin.display()
    );
    println!(
        "try: fabricctl --data-dir {} status   (Ctrl-C stops)",
        config.data_dir.display()
    );
    let exited = tokio::select! {
        () = stop.wait() => None,
        status = gateway_exit(&mut cluster) => Some(status),
    };
    cluster.stop();
    match exited {
        None => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
        Some(status) => anyhow::bail!(
            "the gateway exited ({status}); see {}",
            config.data_dir.join("gateway/fabricd.log").display()
        ),
    }
}

/// Waits until the gateway accepts connections, or fails if it exits first.
async fn wait_listening(
    addr: std::net::SocketAddr,
    cluster: &mut crate::meta::launch::DevCluster,
) -> anyhow::Result<()> {
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = cluster.gateway_exited() {
            anyhow::bail!("the gateway exited ({status}) before it served");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn gateway_exit(cluster: &mut crate::meta::launch::DevCluster) -> std::process::ExitStatus {
    loop {
        if let Some(status) = cluster.gateway_exited() {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// SIGINT and SIGTERM, listened for from the moment this is created. A process that creates
/// it first thing turns a signal arriving while it starts up into a clean stop once it gets to
/// waiting, instead of being killed by the signal's default action half-way through.
pub(crate) struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(crate) fn install() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals {
            interrupt: signal(SignalKind::interrupt()).expect("install SIGINT handler"),
            terminate: signal(SignalKind::terminate()).expect("install SIGTERM handler"),
        }
    }

    /// Returns once either signal has arrived since [`StopSignals::install`].
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
