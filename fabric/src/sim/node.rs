//! One simulated storage node: a real [`ReplicaServer`] over a real [`ExtentStore`] on a
//! [`SimDisk`], served through the simulated network, that can crash and restart.
//!
//! A crash ends every task of the node's process at once (its connections are reset, its
//! disk handles go stale) and, for a power loss, drops what the disk had not made durable.
//! A restart opens the store again from the disk, as `fabricd` does after a kill -9.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use volume::io::Disk;
use volume::io::sim::SimDisk;
use volume::replica::{ReplicaConfig, ReplicaServer};
use volume::store::{ExtentStore, StoreError};
use volume::wire::VolumeId;

use super::net::{Acceptor, Endpoint, SimNet};

/// What runs while the node is up.
struct Running {
    server: Arc<ReplicaServer>,
    shutdown: watch::Sender<bool>,
    connections: JoinSet<()>,
}

/// The node as the network sees it: up (serving) or down (refusing connections).
#[derive(Default)]
struct Slot {
    running: Mutex<Option<Running>>,
}

impl Acceptor for Slot {
    fn accept(&self, _from: Endpoint, stream: DuplexStream) -> io::Result<()> {
        let mut running = self.running.lock().expect("node slot");
        let Some(r) = running.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "node is down",
            ));
        };
        let server = Arc::clone(&r.server);
        let stop = r.shutdown.subscribe();
        r.connections.spawn(async move {
            // The simulated network authenticates no one, and the nodes check no capability.
            server.serve_connection(stream, None, stop).await;
        });
        Ok(())
    }
}

/// How a node goes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// The process dies; the machine keeps what the process had written.
    Kill,
    /// The machine loses power: what was not durable is gone.
    PowerLoss,
}

pub struct SimNode {
    pub id: u64,
    pub addr: SocketAddr,
    dir: PathBuf,
    pub disk: Arc<SimDisk>,
    slot: Arc<Slot>,
    net: SimNet,
}

impl SimNode {
    /// A node whose store lives under `dir` (a real directory: the store takes a lock file
    /// there; its data is on the simulated disk).
    pub fn new(id: u64, addr: SocketAddr, dir: &Path, seed: u64, net: &SimNet) -> SimNode {
        let slot = Arc::new(Slot::default());
        net.attach_node(addr, Arc::clone(&slot) as Arc<dyn Acceptor>);
        SimNode {
            id,
            addr,
            dir: dir.to_owned(),
            disk: Arc::new(SimDisk::new(&format!("node{id}"), seed)),
            slot,
            net: net.clone(),
        }
    }

    /// Opens the store and starts serving.
    pub async fn start(&self) -> Result<(), StoreError> {
        let disk = Arc::clone(&self.disk) as Arc<dyn Disk>;
        // The previous process's last tasks may still hold the store's lock for a moment
        // (their disk handles fail them at once): wait for them as a restart would.
        let store = loop {
            match ExtentStore::open(&self.dir, Arc::clone(&disk)).await {
                Err(StoreError::DataDirLocked(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                other => break other?,
            }
        };
        let server = ReplicaServer::new(Arc::new(store), ReplicaConfig::default());
        *self.slot.running.lock().expect("node slot") = Some(Running {
            server,
            shutdown: watch::Sender::new(false),
            connections: JoinSet::new(),
        });
        Ok(())
    }

    pub fn is_up(&self) -> bool {
        self.slot.running.lock().expect("node slot").is_some()
    }

    /// The running server, if the node is up.
    pub fn server(&self) -> Option<Arc<ReplicaServer>> {
        let running = self.slot.running.lock().expect("node slot");
        running.as_ref().map(|r| Arc::clone(&r.server))
    }

    /// Creates the store volume of `id` (as the node's storage agent does).
    pub async fn ensure_volume(&self, id: VolumeId, size_bytes: u64) -> Result<(), StoreError> {
        let server = self.server().expect("node is up");
        server.ensure_volume(id, size_bytes).await.map(|_| ())
    }

    /// The path of the data file of store volume `name` on the node's disk.
    pub fn data_file(&self, name: &str) -> PathBuf {
        self.dir.join("volumes").join(name).join("data")
    }

    /// Takes the node down.
    pub fn crash(&self, how: Crash) {
        let running = self.slot.running.lock().expect("node slot").take();
        if let Some(mut r) = running {
            r.connections.abort_all();
        }
        self.net.reset_node(self.addr);
        match how {
            Crash::Kill => self.disk.kill_process(),
            Crash::PowerLoss => self.disk.crash_tearing(),
        }
    }
}
