//! [`ReplicaPool`]: what every volume one driver serves shares about the replica servers: two
//! [`Link`]s per server (client IO, and background copies), the attach capabilities its links
//! present, the budget of extent copies each server takes as a resync destination, and the
//! bound on block repairs in flight.
//!
//! Limits on work under failure belong to the destination, not to the volume: with the budget
//! per volume, V degraded volumes would queue V times the copies on one disk, the depth at
//! which replicas miss their reply timeout (and a timeout reads as a failure, which restarts
//! the resync). One pool per driver process makes each limit hold however many volumes it
//! serves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::capabilities::Capabilities;
use super::link::{Connector, Link, TcpConnector};
use super::pace::RecoveryPace;

/// Default time a replica gets to answer one request, in milliseconds.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default requests in flight to one replica server.
pub const REQUESTS_IN_FLIGHT_PER_REPLICA_MAX_DEFAULT: usize = 128;
/// Default extent copies in flight to one destination server, across every resync of every
/// volume: each holds an extent's buffer, and together they are the rebuild's queue depth on
/// that disk. 64 (256 MiB) queued long enough for replies to miss the 5 s timeout; 16 keeps
/// the disks as busy (BENCHMARKS.md).
pub const COPIES_IN_FLIGHT_PER_DESTINATION_MAX_DEFAULT: usize = 16;
/// Default block repairs (after a checksum failure) in flight across every volume: beyond it
/// a bad block is left for the next read that finds it, or for a resync.
pub const REPAIRS_IN_FLIGHT_MAX_DEFAULT: usize = 16;

/// The pool's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub request_timeout_ms: u64,
    pub requests_in_flight_per_replica_max: usize,
    pub copies_in_flight_per_destination_max: usize,
    pub repairs_in_flight_max: usize,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            requests_in_flight_per_replica_max: REQUESTS_IN_FLIGHT_PER_REPLICA_MAX_DEFAULT,
            copies_in_flight_per_destination_max: COPIES_IN_FLIGHT_PER_DESTINATION_MAX_DEFAULT,
            repairs_in_flight_max: REPAIRS_IN_FLIGHT_MAX_DEFAULT,
        }
    }
}

/// Why [`ReplicaPool::new`] refused its limits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("every limit of the replica pool must be positive: {0:?}")]
pub struct PoolConfigError(pub PoolConfig);

/// Links and budgets shared by the volumes of one driver.
pub struct ReplicaPool {
    config: PoolConfig,
    connector: Arc<dyn Connector>,
    links: Mutex<HashMap<SocketAddr, Arc<Link>>>,
    /// A second link per server for background work (resync, rebuild, repair and scrub
    /// copies, digests): a client's 4 KiB write must not wait in a socket behind megabytes of
    /// copies, nor a client's read reply behind a copy's.
    background: Mutex<HashMap<SocketAddr, Arc<Link>>>,
    copies: Mutex<HashMap<SocketAddr, Arc<Semaphore>>>,
    repairs: Arc<Semaphore>,
    /// Presented by every link of the pool.
    capabilities: Arc<Capabilities>,
    /// The pace of every resync's copies, and the clients' latency it is judged on.
    pace: RecoveryPace,
}

impl ReplicaPool {
    /// A pool over real TCP.
    pub fn tcp(config: PoolConfig) -> Result<Arc<ReplicaPool>, PoolConfigError> {
        ReplicaPool::new(config, Arc::new(TcpConnector))
    }

    /// A pool whose sessions `connector` opens.
    pub fn new(
        config: PoolConfig,
        connector: Arc<dyn Connector>,
    ) -> Result<Arc<ReplicaPool>, PoolConfigError> {
        let PoolConfig {
            request_timeout_ms,
            requests_in_flight_per_replica_max,
            copies_in_flight_per_destination_max,
            repairs_in_flight_max,
        } = config;
        if request_timeout_ms == 0
            || requests_in_flight_per_replica_max == 0
            || copies_in_flight_per_destination_max == 0
            || repairs_in_flight_max == 0
        {
            return Err(PoolConfigError(config));
        }
        Ok(Arc::new(ReplicaPool {
            repairs: Arc::new(Semaphore::new(repairs_in_flight_max)),
            config,
            connector,
            links: Mutex::new(HashMap::new()),
            background: Mutex::new(HashMap::new()),
            copies: Mutex::new(HashMap::new()),
            capabilities: Arc::new(Capabilities::default()),
            pace: RecoveryPace::default(),
        }))
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The attach capabilities the pool's links present: set a volume's here when it is
    /// attached, renewed or granted a newer epoch.
    pub fn capabilities(&self) -> &Arc<Capabilities> {
        &self.capabilities
    }

    /// The recovery pace every resync of the pool keeps, and the client latencies it is
    /// judged on.
    pub fn pace(&self) -> &RecoveryPace {
        &self.pace
    }

    /// The link to `addr` for client IO, made on first use.
    pub fn link(&self, addr: SocketAddr) -> Arc<Link> {
        let mut links = self.links.lock().expect("links");
        let link = links.entry(addr).or_insert_with(|| {
            Arc::new(Link::with_capabilities(
                addr,
                Arc::clone(&self.connector),
                Duration::from_millis(self.config.request_timeout_ms),
                self.config.requests_in_flight_per_replica_max,
                Arc::clone(&self.capabilities),
            ))
        });
        Arc::clone(link)
    }

    /// The link to `addr` for background work, made on first use: a sibling of its client
    /// link (a server that did not answer one is unresponsive on both).
    pub fn background_link(&self, addr: SocketAddr) -> Arc<Link> {
        let client = self.link(addr);
        let mut links = self.background.lock().expect("links");
        Arc::clone(
            links
                .entry(addr)
                .or_insert_with(|| Arc::new(client.sibling())),
        )
    }

    /// Waits for a slot to copy an extent to `destination`; the copy holds it until done.
    pub async fn copy_slot(&self, destination: SocketAddr) -> OwnedSemaphorePermit {
        let slots = {
            let mut copies = self.copies.lock().expect("copy slots");
            let max = self.config.copies_in_flight_per_destination_max;
            Arc::clone(
                copies
                    .entry(destination)
                    .or_insert_with(|| Arc::new(Semaphore::new(max))),
            )
        };
        slots
            .acquire_owned()
            .await
            .expect("copy slots are never closed")
    }

    /// A slot for one repair, if one is free now.
    pub fn repair_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.repairs).try_acquire_owned().ok()
    }
}
