//! `fabricd dev`: a local node that serves volumes over NBD from one data directory.
//!
//! One process today; later issues grow this into a cluster of processes (`--nodes N`), which is
//! why the node's store lives in `DATA_DIR/node-0` rather than in `DATA_DIR` itself.

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
    // The metadata group (if any) lives in DATA_DIR/node-1.., beside the NBD store in node-0.
    let cluster = match config.nodes {
        Some(n) => {
            let c = crate::meta::launch::DevCluster::start(&config.data_dir, n)
                .await
                .context("start the metadata group")?;
            let addrs: Vec<&str> = c.members.iter().map(|(_, a)| a.as_str()).collect();
            println!("metadata group of {n} at {}", addrs.join(","));
            println!(
                "try: fabricctl --data-dir {} status",
                config.data_dir.display()
            );
            Some(c)
        }
        None => None,
    };
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

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = volume::nbd::NbdServer::new(exports.clone(), volume::nbd::NbdConfig::default())
        .context("configure NBD server")?;
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
        "try: nbdinfo nbd://{addr}/{}   (Ctrl-C stops)",
        exports[0].name()
    );

    wait_for_stop().await;
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
    if let Some(c) = cluster {
        c.stop();
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

pub(crate) async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
