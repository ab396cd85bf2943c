//! The simulated network: byte streams between the volume clients and the replica servers of
//! one process, with the faults of a real one.
//!
//! A connection is two in-memory pipes joined by one relay task per direction. A relay moves
//! what it finds in its source to its destination after a seeded delay, in order, and holds
//! it while that direction is cut: a partition, possibly one-way, stalls a stream as a lost
//! route stalls TCP, and the caller's own timeout decides when to give up. Resetting a
//! connection ends both relays, so both ends see their stream close. Opening a connection
//! to a node whose server is down is refused at once; to a node cut off from the caller it
//! never completes.
//!
//! Every random choice comes from the network's seeded generator, so on tokio's
//! current-thread runtime with paused time a run repeats exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use volume::client::{ConnectFuture, Connector, StreamReader, StreamWriter};

use super::signal::Signal;

/// Capacity of each in-memory pipe, in bytes: like a socket buffer, it bounds what a writer
/// can queue before it waits for the reader.
pub const PIPE_BYTES: usize = 256 * 1024;
/// Largest piece a relay moves at once, in bytes.
const RELAY_CHUNK_BYTES: usize = 64 * 1024;
/// Most one-way delay of a piece on a healthy link, in milliseconds. Delays are whole
/// milliseconds, the timer's resolution: then a run's timing does not depend on where within a
/// millisecond the paused clock started.
const DELAY_MAX_MS: u64 = 1;
/// Pieces in a million that are delayed much longer (a retransmission, a busy switch).
const SPIKE_PPM: u32 = 2_000;
/// How long such a spike lasts at most, in milliseconds.
const SPIKE_MAX_MS: u64 = 300;

/// One end of a link: a volume client (by number) or a replica server (by address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Client(u32),
    Node(SocketAddr),
}

/// Where the network hands an accepted connection: the replica server of a node.
pub trait Acceptor: Send + Sync + 'static {
    /// Serves `stream`, opened by `from`. Refused (`Err`) if the node's server is down.
    fn accept(&self, from: Endpoint, stream: DuplexStream) -> io::Result<()>;
}

struct Connection {
    from: Endpoint,
    to: SocketAddr,
    /// Set when the connection is reset; shared with its two relays.
    reset: Arc<Signal<bool>>,
}

impl Connection {
    fn reset(&self) {
        self.reset.update(|r| *r = true);
    }

    /// Whether its relays still run and it was not reset.
    fn is_open(&self) -> bool {
        Arc::strong_count(&self.reset) > 1 && !self.reset.with(|&r| r)
    }
}

struct NetState {
    rng: ChaCha8Rng,
    /// One-way cuts: bytes from the first endpoint to the second are held.
    cuts: BTreeSet<(Endpoint, Endpoint)>,
    nodes: BTreeMap<SocketAddr, Arc<dyn Acceptor>>,
    connections: Vec<Connection>,
    connections_opened: u64,
}

/// The network of one simulation; clone freely.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<NetState>>,
    /// Counts changes of the cuts, so held relays look again.
    cuts_changed: Arc<Signal<u64>>,
}

impl SimNet {
    pub fn new(seed: u64) -> SimNet {
        SimNet {
            state: Arc::new(Mutex::new(NetState {
                rng: ChaCha8Rng::seed_from_u64(seed),
                cuts: BTreeSet::new(),
                nodes: BTreeMap::new(),
                connections: Vec::new(),
                connections_opened: 0,
            })),
            cuts_changed: Arc::new(Signal::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().expect("simulated network state")
    }

    /// Makes `addr` reachable, served by `acceptor`.
    pub fn attach_node(&self, addr: SocketAddr, acceptor: Arc<dyn Acceptor>) {
        self.lock().nodes.insert(addr, acceptor);
    }

    /// A connector for volume client `client`.
    pub fn connector(&self, client: u32) -> Arc<dyn Connector> {
        Arc::new(SimConnector {
            net: self.clone(),
            me: Endpoint::Client(client),
        })
    }

    /// Holds everything sent from `from` to `to` until [`SimNet::heal`] or [`SimNet::join`].
    pub fn cut(&self, from: Endpoint, to: Endpoint) {
        self.lock().cuts.insert((from, to));
        self.cuts_changed.update(|g| *g += 1);
    }

    /// Restores the one-way link from `from` to `to`.
    pub fn join(&self, from: Endpoint, to: Endpoint) {
        self.lock().cuts.remove(&(from, to));
        self.cuts_changed.update(|g| *g += 1);
    }

    /// Cuts `node` off from every other endpoint in both directions.
    pub fn isolate(&self, node: SocketAddr, clients: u32) {
        let others: Vec<Endpoint> = {
            let s = self.lock();
            s.nodes
                .keys()
                .filter(|&&a| a != node)
                .map(|&a| Endpoint::Node(a))
                .chain((0..clients).map(Endpoint::Client))
                .collect()
        };
        for other in others {
            self.cut(Endpoint::Node(node), other);
            self.cut(other, Endpoint::Node(node));
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        self.lock().cuts.clear();
        self.cuts_changed.update(|g| *g += 1);
    }

    /// Closes every connection to `node`, as a crash of its process does.
    pub fn reset_node(&self, node: SocketAddr) {
        let mut s = self.lock();
        s.connections.retain(|c| {
            let hit = c.to == node;
            if hit {
                c.reset();
            }
            !hit
        });
    }

    /// Closes one connection chosen at random, if there is one: a reset by a middlebox.
    pub fn reset_one(&self) -> Option<(Endpoint, SocketAddr)> {
        let mut s = self.lock();
        s.connections.retain(Connection::is_open);
        if s.connections.is_empty() {
            return None;
        }
        let len = s.connections.len();
        let i = s.rng.random_range(0..len);
        let c = s.connections.swap_remove(i);
        c.reset();
        Some((c.from, c.to))
    }

    /// Connections opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.lock().connections_opened
    }

    fn delay(&self) -> Duration {
        let mut s = self.lock();
        if s.rng.random_ratio(SPIKE_PPM, 1_000_000) {
            Duration::from_millis(s.rng.random_range(1..=SPIKE_MAX_MS))
        } else {
            Duration::from_millis(s.rng.random_range(0..=DELAY_MAX_MS))
        }
    }

    fn is_cut(&self, from: Endpoint, to: Endpoint) -> bool {
        self.lock().cuts.contains(&(from, to))
    }

    /// Waits until the link from `from` to `to` is not cut.
    async fn wait_joined(&self, from: Endpoint, to: Endpoint) {
        self.cuts_changed.wait_for(|_| !self.is_cut(from, to)).await;
    }

    async fn open(&self, from: Endpoint, to: SocketAddr) -> io::Result<DuplexStream> {
        tokio::time::sleep(self.delay()).await;
        // A connection needs both directions: without them the handshake never completes.
        self.wait_joined(from, Endpoint::Node(to)).await;
        self.wait_joined(Endpoint::Node(to), from).await;
        let acceptor = self.lock().nodes.get(&to).cloned().ok_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionRefused, format!("no node {to}"))
        })?;
        let (client_app, client_net) = tokio::io::duplex(PIPE_BYTES);
        let (server_net, server_app) = tokio::io::duplex(PIPE_BYTES);
        acceptor.accept(from, server_app)?;
        let reset = Arc::new(Signal::new(false));
        {
            let mut s = self.lock();
            s.connections_opened += 1;
            s.connections.push(Connection {
                from,
                to,
                reset: Arc::clone(&reset),
            });
        }
        let (client_r, client_w) = tokio::io::split(client_net);
        let (server_r, server_w) = tokio::io::split(server_net);
        let to = Endpoint::Node(to);
        tokio::spawn(
            self.clone()
                .relay(client_r, server_w, from, to, Arc::clone(&reset)),
        );
        tokio::spawn(self.clone().relay(server_r, client_w, to, from, reset));
        Ok(client_app)
    }

    /// Moves bytes from `src` (sent by `from`) to `dst` (read by `to`) until either side
    /// closes or the connection is reset.
    async fn relay(
        self,
        mut src: tokio::io::ReadHalf<DuplexStream>,
        mut dst: tokio::io::WriteHalf<DuplexStream>,
        from: Endpoint,
        to: Endpoint,
        reset: Arc<Signal<bool>>,
    ) {
        let mut buf = vec![0u8; RELAY_CHUNK_BYTES];
        let moving = async {
            loop {
                let n = match src.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                tokio::time::sleep(self.delay()).await;
                self.wait_joined(from, to).await;
                if dst.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            biased;
            () = reset.wait_for(|&r| r) => {}
            () = moving => {}
        }
        let _ = dst.shutdown().await;
    }
}

struct SimConnector {
    net: SimNet,
    me: Endpoint,
}

impl Connector for SimConnector {
    fn connect(&self, addr: SocketAddr) -> ConnectFuture {
        let (net, me) = (self.net.clone(), self.me);
        Box::pin(async move {
            let stream = net.open(me, addr).await?;
            let (r, w) = tokio::io::split(stream);
            Ok((Box::new(r) as StreamReader, Box::new(w) as StreamWriter))
        })
    }
}
