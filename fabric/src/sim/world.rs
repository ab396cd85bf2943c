//! One seeded run: the cluster, the workload, the faults, and the checks after heal.
//!
//! The run has three phases. For `sim_seconds`, workers write, read and flush while the fault
//! schedule crashes and restarts nodes, partitions links (also one way), resets connections,
//! takes the metadata service away, injects disk errors and torn writes, and may let a second
//! driver take the volume over. Then everything heals, and the run waits for the writer to
//! bring every stale replica back. Last, every block ever written is read through the driver
//! and from each replica of its PG directly: the driver must return the last acknowledged
//! write (or a later one that failed), and the replicas must hold the same bytes.
//!
//! With [`SimOptions::scrub`], the drivers also scrub PGs under the faults and the schedule
//! flips bits of replicas' data (never of a PG's last current copy); after heal every PG is
//! deep-scrubbed, which must leave no bad block, before the checks. A scrub that repaired from
//! a stale replica would put an old write over an acknowledged one, which the checks find.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;
use volume::BlockVolume;
use volume::io::sim::FaultOp;
use volume::replica::store_volume_name;
use volume::wire::{EXTENT_SIZE_BYTES, VolumeId};

use super::check::{BLOCK_BYTES, History};
use super::client::SimClient;
use super::meta::SimMeta;
use super::net::{Endpoint, SimNet};
use super::node::{Crash, SimNode};
use crate::meta::command::{Applied, CommandV1};
use crate::meta::model::{DiskInfo, Location, NodeRegistration, PoolSpec, Rule, VolumeSpec};
use crate::meta::state::ClusterState;

/// The volume every run writes.
pub const VOLUME: &str = "simvol";
/// Its size, in extents.
pub const VOLUME_EXTENTS: u64 = 8;
/// Placement groups of the pool.
pub const PG_COUNT: u32 = 8;
/// Workers per driver, each with one IO in flight.
pub const WORKERS_PER_CLIENT: usize = 6;
/// Longest write or read of the workload, in blocks.
const IO_BLOCKS_MAX: u64 = 4;
/// After the faults end, how long the writer has to bring every replica back, in simulated
/// seconds.
const SETTLE_SECONDS_MAX: u64 = 600;

/// What to run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Simulated seconds of workload under faults.
    pub sim_seconds: u64,
    /// Storage nodes (3 to 9); `None` lets the seed choose.
    pub nodes: Option<usize>,
    /// Scrub while the faults run: each driver scrubs a random PG (light or deep) now and
    /// then, the schedule also flips bits on replicas (bit rot), and after heal every PG is
    /// deep-scrubbed before the checks. Off, a seed runs as it always did.
    pub scrub: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            sim_seconds: 30,
            nodes: None,
            scrub: false,
        }
    }
}

/// What one seed did.
#[derive(Clone, Debug)]
pub struct SimReport {
    pub seed: u64,
    /// The first violation found, if any.
    pub failure: Option<String>,
    /// Acknowledged writes whose blocks were checked after heal.
    pub writes_checked: u64,
    pub reads_checked: u64,
    pub simulated: Duration,
    /// A digest of every operation's outcome, in order: equal for equal seeds when the run is
    /// deterministic.
    pub trace: u64,
    /// What the schedule did, for the log of a failing seed.
    pub faults: Vec<String>,
}

thread_local! {
    /// When the run on this thread started, on its paused clock.
    static STARTED: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Simulated time since the run on this thread started (for log lines), if one runs.
pub fn simulated_elapsed() -> Option<Duration> {
    STARTED.get().map(|t| t.elapsed())
}

/// Runs `seed` on a fresh current-thread runtime with paused time.
pub fn run_seed(seed: u64, options: &SimOptions) -> SimReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("current-thread runtime");
    runtime.block_on(run(seed, options.clone()))
}

/// What the workers and the schedule share.
struct Shared {
    history: Mutex<History>,
    /// Blocks with a write in flight: the workload never writes one block twice at once.
    busy: Mutex<BTreeSet<u64>>,
    trace: Mutex<DefaultHasher>,
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
    blocks: u64,
}

impl Shared {
    fn fail(&self, what: String) {
        tracing::error!(failure = %what, "check failed");
        self.failures.lock().expect("failures").push(what);
    }

    fn trace(&self, event: impl Hash) {
        event.hash(&mut *self.trace.lock().expect("trace"));
    }
}

async fn run(seed: u64, options: SimOptions) -> SimReport {
    STARTED.set(Some(Instant::now()));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let node_count = options.nodes.unwrap_or_else(|| rng.random_range(3..=9));
    assert!((3..=9).contains(&node_count), "3 to 9 nodes");
    let dir = tempfile::Builder::new()
        .prefix("fabric-sim-")
        .tempdir()
        .expect("temporary directory");
    let net = SimNet::new(seed ^ 0x006e_6574);
    let mut nodes = Vec::new();
    for i in 0..node_count {
        let id = i as u64 + 1;
        let addr: SocketAddr = format!("10.0.0.{id}:7000").parse().expect("address");
        let node = SimNode::new(
            id,
            addr,
            &dir.path().join(format!("n{id}")),
            seed ^ id,
            &net,
        );
        node.start().await.expect("start node");
        nodes.push(node);
    }
    let addr_of: Arc<HashMap<u64, SocketAddr>> =
        Arc::new(nodes.iter().map(|n| (n.id, n.addr)).collect());
    let min_replicas = rng.random_range(1..=2);
    let (state, volume_id) = cluster_state(&nodes, min_replicas);
    for node in &nodes {
        node.ensure_volume(volume_id, VOLUME_EXTENTS * EXTENT_SIZE_BYTES)
            .await
            .expect("create the replica volume");
    }
    let meta = SimMeta::new(seed ^ 0x6d65_7461, state);
    let shared = Arc::new(Shared {
        history: Mutex::new(History::default()),
        busy: Mutex::new(BTreeSet::new()),
        trace: Mutex::new(DefaultHasher::new()),
        failures: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        blocks: VOLUME_EXTENTS * EXTENT_SIZE_BYTES / BLOCK_BYTES,
    });
    let started = Instant::now();
    let first = SimClient::attach(0, &net, &meta, VOLUME, Arc::clone(&addr_of), false)
        .await
        .expect("first attach on a healthy cluster");
    let takeover_at = rng
        .random_bool(0.3)
        .then(|| Duration::from_millis(rng.random_range(1_000..options.sim_seconds * 1_000)));

    let mut tasks = tokio::task::JoinSet::new();
    let first = Arc::new(first);
    spawn_client(&mut tasks, &first, &shared, rng.random(), options.scrub);
    let mut faults = Vec::new();
    let world = World {
        nodes,
        net: net.clone(),
        meta: Arc::clone(&meta),
        rng,
        faults: &mut faults,
        down: BTreeMap::new(),
        power_lost: BTreeSet::new(),
        clients: 2,
        writers: vec![Arc::clone(&first)],
    };
    let mut active = Arc::clone(&first);
    let end = started + Duration::from_secs(options.sim_seconds);
    let (mut world, taken_over) = schedule(world, end, takeover_at).await;
    if taken_over.is_some() {
        // Crashed nodes keep coming back while the new writer attaches: the last current
        // replica of a group may be on one.
        let attach = SimClient::attach(1, &net, &meta, VOLUME, Arc::clone(&addr_of), true);
        tokio::pin!(attach);
        let attached = loop {
            tokio::select! {
                biased;
                attached = &mut attach => break attached,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    world.restart_due(Instant::now()).await;
                }
            }
        };
        match attached {
            Ok(second) => {
                shared.history.lock().expect("history").fence(0);
                world.note("client 1 took the volume over".into());
                let second = Arc::new(second);
                world.writers.push(Arc::clone(&second));
                let seed = world.rng.random();
                spawn_client(&mut tasks, &second, &shared, seed, options.scrub);
                active = second;
                // The rest of the schedule runs against the new writer.
                let end = Instant::now().max(end);
                let (w, _) = schedule(world, end, None).await;
                world = w;
            }
            Err(e) => shared.fail(format!("forced attach failed on a healable cluster: {e}")),
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let simulated = started.elapsed();

    // Heal, and let the writer bring every replica back.
    let dead = world.heal_all().await;
    if !dead.is_empty() {
        shared.fail(format!("nodes {dead:?} cannot start on healed disks"));
    }
    let settle_end = Instant::now() + Duration::from_secs(SETTLE_SECONDS_MAX);
    while !active.settled() {
        if Instant::now() > settle_end {
            let state = meta.state();
            shared.fail(format!(
                "not settled {SETTLE_SECONDS_MAX} s after heal: driver holds stale {:?}, leaving {:?}, metadata lists {:?}",
                active.volume.stale_replicas(),
                active.volume.leaving_replicas(),
                state.volumes[VOLUME].stale
            ));
            break;
        }
        active.round().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if options.scrub {
        let rotten = rot(&mut world, volume_id).await;
        scrub_after_heal(&shared, &active, rotten).await;
    }
    let writes_checked = verify_after_heal(&shared, &active, &world, volume_id).await;
    let trace = shared.trace.lock().expect("trace").finish();
    let history = shared.history.lock().expect("history");
    let mut failures = shared.failures.lock().expect("failures").clone();
    failures.extend(history.fenced_acks.iter().cloned());
    SimReport {
        seed,
        // The first few: a later one often explains the first.
        failure: (!failures.is_empty())
            .then(|| failures[..failures.len().min(3)].join("\n    then: ")),
        writes_checked,
        reads_checked: history.reads_checked,
        simulated,
        trace,
        faults,
    }
}

/// The cluster map: one rack per node, a 3-way (or n-way for fewer nodes) pool, the volume.
fn cluster_state(nodes: &[SimNode], min_replicas: u32) -> (ClusterState, VolumeId) {
    let mut state = ClusterState::default();
    for node in nodes {
        let registration = NodeRegistration {
            id: node.id,
            rpc_addr: format!("10.0.0.{}:7001", node.id),
            data_addr: node.addr.to_string(),
            location: Location {
                levels: vec![("rack".into(), format!("r{}", node.id))],
            },
            disks: vec![DiskInfo {
                name: "data".into(),
                capacity_bytes: 1 << 40,
            }],
        };
        state
            .apply(&CommandV1::RegisterNode(registration).into())
            .expect("register node");
    }
    let pool = PoolSpec {
        name: "simpool".into(),
        rule: Rule {
            replicas: 3,
            min_replicas,
            failure_domain: "rack".into(),
            tag_filter: vec![],
        },
        pg_count: PG_COUNT,
    };
    state
        .apply(&CommandV1::CreatePool(pool).into())
        .expect("create pool");
    let spec = VolumeSpec {
        name: VOLUME.into(),
        pool: "simpool".into(),
        size_bytes: VOLUME_EXTENTS * EXTENT_SIZE_BYTES,
        extent_size_bytes: EXTENT_SIZE_BYTES,
        request_id: String::new(),
    };
    let Ok(Applied::Volume(v)) = state.apply(&CommandV1::CreateVolume(spec).into()) else {
        panic!("create volume");
    };
    (state, VolumeId(v.id))
}

fn spawn_client(
    tasks: &mut tokio::task::JoinSet<()>,
    client: &Arc<SimClient>,
    shared: &Arc<Shared>,
    seed: u64,
    scrub: bool,
) {
    if scrub {
        let client = Arc::clone(client);
        let shared = Arc::clone(shared);
        let rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7363_7275_6221);
        tasks.spawn(scrubber(client, shared, rng));
    }
    let follower = Arc::clone(client);
    let stop = Arc::clone(shared);
    tasks.spawn(async move {
        tokio::select! {
            biased;
            () = follower.follow_and_resync() => {}
            () = until_stopped(&stop) => {}
        }
    });
    for w in 0..WORKERS_PER_CLIENT {
        let client = Arc::clone(client);
        let shared = Arc::clone(shared);
        let rng = ChaCha8Rng::seed_from_u64(seed ^ w as u64);
        tasks.spawn(worker(client, shared, rng));
    }
}

async fn until_stopped(shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Now and then a scrub of a random PG, light or deep, through the driver.
async fn scrubber(client: Arc<SimClient>, shared: Arc<Shared>, mut rng: ChaCha8Rng) {
    let volume = &client.volume;
    while !shared.stop.load(Ordering::Relaxed) && volume.fenced_by().is_none() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..2_000))).await;
        let group = rng.random_range(0..volume.group_count());
        let deep = rng.random_bool(0.5);
        let result = volume.scrub_group(group, deep).await;
        shared.trace(("scrub", client.id, group, deep, format!("{result:?}")));
    }
}

/// Flips one bit of one replica in a random block of each extent (bit rot on a settled
/// cluster, one copy of a block at a time); returns how many.
async fn rot(world: &mut World<'_>, volume_id: VolumeId) -> u64 {
    let name = store_volume_name(volume_id);
    let pgs = {
        let state = world.meta.state();
        let v = &state.volumes[VOLUME];
        state.pools[&v.spec.pool].map.pgs.clone()
    };
    let mut flipped = 0;
    for extent in 0..VOLUME_EXTENTS {
        let pg = volume::client::pg_of(volume_id, extent, pgs.len());
        let replicas = &pgs[pg];
        let node = replicas[world.rng.random_range(0..replicas.len())];
        let node = world.nodes.iter().find(|n| n.id == node).expect("node");
        let offset = extent * EXTENT_SIZE_BYTES + world.rng.random_range(0..EXTENT_SIZE_BYTES);
        let bit = world.rng.random_range(0..8);
        // A file shorter than the offset (its tail never written) has nothing to rot there.
        if node
            .disk
            .flip_bit(&node.data_file(&name), offset, bit)
            .is_ok()
        {
            flipped += 1;
        }
    }
    let at = simulated_elapsed().unwrap_or_default().as_millis();
    world.faults.push(format!(
        "{}.{:03}s: {flipped} bits rot after heal",
        at / 1000,
        at % 1000
    ));
    flipped
}

/// Deep-scrubs every PG through the writer, twice: the first pass must find and repair the
/// `rotten` blocks (and may find copies that differ), the second must find nothing.
async fn scrub_after_heal(shared: &Shared, active: &SimClient, rotten: u64) {
    let volume = &active.volume;
    for pass in 0..2 {
        let mut total = volume::client::ScrubTally::default();
        for group in 0..volume.group_count() {
            match volume.scrub_group(group, true).await {
                Ok(t) => total.add(&t),
                Err(e) => shared.fail(format!("after heal: deep scrub of PG {group}: {e}")),
            }
        }
        let wrong = match pass {
            0 => total.bad_blocks != rotten || total.unrepaired > 0 || total.unchecked > 0,
            _ => total.errors() > 0 || total.unchecked > 0,
        };
        if wrong {
            shared.fail(format!(
                "after heal: deep scrub pass {pass} with {rotten} bits rotten found {total:?}"
            ));
        }
    }
}

/// One IO at a time: writes of blocks no other worker is writing, reads of any blocks,
/// flushes; each outcome checked and traced.
async fn worker(client: Arc<SimClient>, shared: Arc<Shared>, mut rng: ChaCha8Rng) {
    let volume = &client.volume;
    while !shared.stop.load(Ordering::Relaxed) && volume.fenced_by().is_none() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..40))).await;
        let blocks = rng.random_range(1..=IO_BLOCKS_MAX);
        // Most IO goes to a hot eighth of the volume, so that reads meet recent writes.
        let span = if rng.random_bool(0.8) {
            shared.blocks / 8
        } else {
            shared.blocks
        };
        let first = rng.random_range(0..span - blocks);
        let offset = first * BLOCK_BYTES;
        match rng.random_range(0..10) {
            0..4 => {
                {
                    let mut busy = shared.busy.lock().expect("busy");
                    if (first..first + blocks).any(|b| busy.contains(&b)) {
                        continue;
                    }
                    busy.extend(first..first + blocks);
                }
                let (id, started, data) = shared
                    .history
                    .lock()
                    .expect("history")
                    .start_write(client.id, first, blocks);
                let fua = rng.random_bool(0.1);
                let result = volume.write(offset, data, fua).await;
                if result.is_ok() {
                    let mut h = shared.history.lock().expect("history");
                    h.ack_write(id, client.id, started, first, blocks);
                }
                shared.trace(("write", client.id, id, first, blocks, result.is_ok()));
                let mut busy = shared.busy.lock().expect("busy");
                for b in first..first + blocks {
                    busy.remove(&b);
                }
            }
            4..9 => {
                let t0 = shared.history.lock().expect("history").tick();
                let result = volume.read(offset, (blocks * BLOCK_BYTES) as u32).await;
                shared.trace(("read", client.id, first, blocks, result.is_ok()));
                if let Ok(data) = result {
                    let checked = shared
                        .history
                        .lock()
                        .expect("history")
                        .check_read(first, &data, t0);
                    if let Err(e) = checked {
                        let extent = offset / EXTENT_SIZE_BYTES;
                        let mut versions = Vec::new();
                        for (node, &addr) in client.addr_of.iter().collect::<BTreeMap<_, _>>() {
                            let v = volume.extent_versions(addr, extent, 1).await;
                            versions.push(format!("node {node}: {:?}", v.map(|v| v[0])));
                        }
                        shared.fail(format!(
                            "client {}: {e}; extent {extent} versions {}",
                            client.id,
                            versions.join(", ")
                        ));
                    }
                }
            }
            _ => {
                let result = volume.flush().await;
                shared.trace(("flush", client.id, result.is_ok()));
            }
        }
    }
}

/// The cluster as the fault schedule drives it.
struct World<'a> {
    nodes: Vec<SimNode>,
    net: SimNet,
    meta: Arc<SimMeta>,
    rng: ChaCha8Rng,
    faults: &'a mut Vec<String>,
    /// Nodes down, with when they come back.
    down: BTreeMap<usize, Instant>,
    /// Nodes that lost power and that a writer still counts as a live replica of some PG:
    /// the writer has not noticed yet that they lost what they had not flushed, so they hold
    /// no current copy of those writes, whatever the writer's acting set says.
    power_lost: BTreeSet<SocketAddr>,
    clients: u32,
    /// The drivers, for the replicas they still write to.
    writers: Vec<Arc<SimClient>>,
}

/// A fault that heals at a time.
enum Healing {
    Link(Endpoint, Endpoint),
    Isolated(SocketAddr),
    Meta,
}

/// Runs the fault schedule until `end`; returns early, with `Some`, at `takeover_at`.
async fn schedule<'a>(
    mut world: World<'a>,
    end: Instant,
    takeover_at: Option<Duration>,
) -> (World<'a>, Option<()>) {
    let start = Instant::now();
    let mut healing: Vec<(Instant, Healing)> = Vec::new();
    loop {
        let pause = Duration::from_millis(world.rng.random_range(100..1_500));
        tokio::time::sleep(pause).await;
        let now = Instant::now();
        // Restarts and heals that are due.
        world.restart_due(now).await;
        let mut i = 0;
        while i < healing.len() {
            if healing[i].0 <= now {
                let (_, h) = healing.swap_remove(i);
                world.heal(h);
            } else {
                i += 1;
            }
        }
        if now >= end {
            for (_, h) in healing {
                world.heal(h);
            }
            return (world, None);
        }
        if takeover_at.is_some_and(|t| now - start >= t) {
            for (_, h) in healing {
                world.heal(h);
            }
            return (world, Some(()));
        }
        world.inject(now, &mut healing);
    }
}

impl World<'_> {
    fn note(&mut self, what: String) {
        let at = simulated_elapsed().unwrap_or_default().as_millis();
        self.faults
            .push(format!("{}.{:03}s: {what}", at / 1000, at % 1000));
    }

    /// Whether node `id` holds the last current replica of a PG of the volume: the only one
    /// the metadata lists as current, or a current one beside which a driver writes to no
    /// other (the removal of the others waits for the metadata service) but ones that lost
    /// power unnoticed.
    fn holds_a_last_copy(&self, id: u64) -> bool {
        let addr = self.nodes.iter().find(|n| n.id == id).map(|n| n.addr);
        let state = self.meta.state();
        let v = &state.volumes[VOLUME];
        let pgs = &state.pools[&v.spec.pool].map.pgs;
        pgs.iter().enumerate().any(|(g, replicas)| {
            let acting = v.acting(g as u32, replicas);
            acting == [id]
                || (acting.contains(&id)
                    && self.writers.iter().any(|w| {
                        w.volume.fenced_by().is_none()
                            && w.volume
                                .live_replicas(g)
                                .iter()
                                .filter(|live| !self.power_lost.contains(live))
                                .all(|&live| Some(live) == addr)
                    }))
        })
    }

    /// Forgets the power losses every writer has noticed: a node no writer counts as live
    /// any more comes back only through a resync, which leaves it current again.
    fn forget_noticed_power_losses(&mut self) {
        let groups = {
            let state = self.meta.state();
            state.pools[&state.volumes[VOLUME].spec.pool].map.pgs.len()
        };
        let writers = &self.writers;
        self.power_lost.retain(|addr| {
            writers.iter().any(|w| {
                w.volume.fenced_by().is_none()
                    && (0..groups).any(|g| w.volume.live_replicas(g).contains(addr))
            })
        });
    }

    /// Starts the crashed nodes whose time to come back has come.
    async fn restart_due(&mut self, now: Instant) {
        let due: Vec<usize> = self
            .down
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(&i, _)| i)
            .collect();
        for i in due {
            self.restart(i).await;
        }
    }

    fn up_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| !self.down.contains_key(i))
            .collect()
    }

    fn inject(&mut self, now: Instant, healing: &mut Vec<(Instant, Healing)>) {
        let up = self.up_nodes();
        let down_max = if self.nodes.len() >= 5 { 2 } else { 1 };
        let pick = self.rng.random_range(0..up.len());
        let n = up[pick];
        let addr = self.nodes[n].addr;
        let ms = |rng: &mut ChaCha8Rng, lo: u64, hi: u64| {
            Duration::from_millis(rng.random_range(lo..hi))
        };
        match self.rng.random_range(0..100) {
            0..20 if self.down.len() < down_max => {
                // A power loss drops the writes a disk had not made durable. On the last
                // current replica of a PG those are acknowledged writes no other copy holds
                // (a block device promises durability only at FLUSH or FUA, and the checker
                // does not model that), so there it is a process kill instead.
                let power_loss = self.rng.random_bool(0.3);
                self.forget_noticed_power_losses();
                let how = if power_loss && !self.holds_a_last_copy(self.nodes[n].id) {
                    self.power_lost.insert(self.nodes[n].addr);
                    Crash::PowerLoss
                } else {
                    Crash::Kill
                };
                let back = now + ms(&mut self.rng, 200, 6_000);
                self.nodes[n].crash(how);
                self.down.insert(n, back);
                self.note(format!("node {} {how:?}, back in {:?}", n + 1, back - now));
            }
            20..35 => {
                let heal = now + ms(&mut self.rng, 300, 8_000);
                self.net.isolate(addr, self.clients);
                healing.push((heal, Healing::Isolated(addr)));
                self.note(format!("node {} isolated for {:?}", n + 1, heal - now));
            }
            35..45 => {
                let client = Endpoint::Client(self.rng.random_range(0..self.clients));
                let node = Endpoint::Node(addr);
                let (from, to) = if self.rng.random_bool(0.5) {
                    (client, node)
                } else {
                    (node, client)
                };
                let heal = now + ms(&mut self.rng, 300, 8_000);
                self.net.cut(from, to);
                healing.push((heal, Healing::Link(from, to)));
                self.note(format!("link {from:?} -> {to:?} cut for {:?}", heal - now));
            }
            45..52 if self.meta.is_up() => {
                let heal = now + ms(&mut self.rng, 500, 40_000);
                self.meta.set_up(false);
                healing.push((heal, Healing::Meta));
                self.note(format!("metadata unavailable for {:?}", heal - now));
            }
            52..67 => {
                if let Some((from, to)) = self.net.reset_one() {
                    self.note(format!("connection {from:?} -> {to} reset"));
                }
            }
            67..77 => {
                let op = match self.rng.random_range(0..3) {
                    0 => FaultOp::Read,
                    1 => FaultOp::Write,
                    _ => FaultOp::Sync,
                };
                let count = self.rng.random_range(1..4);
                self.nodes[n].disk.fail_next(op, count);
                self.note(format!("node {}: next {count} {op:?} fail", n + 1));
            }
            // A torn write garbles the old contents of its blocks; on the last current
            // replica of a PG that destroys the only copy of acknowledged data, which is
            // beyond what replication can mask (a failure of every replica): not injected.
            77..85 if !self.holds_a_last_copy(self.nodes[n].id) => {
                self.nodes[n].disk.tear_next_writes(1);
                self.note(format!("node {}: next write torn", n + 1));
            }
            _ => {}
        }
    }

    fn heal(&mut self, h: Healing) {
        match h {
            Healing::Link(from, to) => self.net.join(from, to),
            Healing::Isolated(addr) => {
                let others: Vec<Endpoint> = self
                    .nodes
                    .iter()
                    .map(|n| Endpoint::Node(n.addr))
                    .chain((0..self.clients).map(Endpoint::Client))
                    .collect();
                for o in others {
                    self.net.join(Endpoint::Node(addr), o);
                    self.net.join(o, Endpoint::Node(addr));
                }
            }
            Healing::Meta => self.meta.set_up(true),
        }
    }

    /// Starts node `i` again; one that fails to start (an injected disk error while it opens)
    /// is tried again a second later, as a service manager would.
    async fn restart(&mut self, i: usize) -> bool {
        match self.nodes[i].start().await {
            Ok(()) => {
                self.down.remove(&i);
                self.note(format!("node {} restarted", i + 1));
                true
            }
            Err(e) => {
                self.down.insert(i, Instant::now() + Duration::from_secs(1));
                self.note(format!("node {} did not restart: {e}", i + 1));
                false
            }
        }
    }

    /// Ends every fault; returns the nodes that still cannot start.
    async fn heal_all(&mut self) -> Vec<usize> {
        self.net.heal();
        self.meta.set_up(true);
        for node in &self.nodes {
            for op in [FaultOp::Read, FaultOp::Write, FaultOp::Sync] {
                node.disk.fail_next(op, 0);
            }
            node.disk.tear_next_writes(0);
        }
        let mut down: Vec<usize> = self.down.keys().copied().collect();
        down.sort_unstable();
        let mut dead = Vec::new();
        for i in down {
            if !self.restart(i).await {
                dead.push(i + 1);
            }
        }
        dead
    }
}

/// Reads every written block through the driver and from every replica of its PG.
async fn verify_after_heal(
    shared: &Shared,
    active: &SimClient,
    world: &World<'_>,
    volume_id: VolumeId,
) -> u64 {
    let blocks = shared.history.lock().expect("history").written_blocks();
    let (pgs, vid) = {
        let state = world.meta.state();
        let v = &state.volumes[VOLUME];
        (state.pools[&v.spec.pool].map.pgs.clone(), VolumeId(v.id))
    };
    assert_eq!(vid, volume_id);
    let by_id: HashMap<u64, &SimNode> = world.nodes.iter().map(|n| (n.id, n)).collect();
    let store_name = store_volume_name(volume_id);
    for &b in &blocks {
        let offset = b * BLOCK_BYTES;
        let extent = offset / EXTENT_SIZE_BYTES;
        let pg = volume::client::pg_of(volume_id, extent, pgs.len());
        let t0 = shared.history.lock().expect("history").tick();
        match active.volume.read(offset, BLOCK_BYTES as u32).await {
            Ok(data) => {
                let checked = shared
                    .history
                    .lock()
                    .expect("history")
                    .check_read(b, &data, t0);
                if let Err(e) = checked {
                    shared.fail(format!("after heal: PG {pg}: {e}"));
                }
            }
            Err(e) => shared.fail(format!("after heal: PG {pg}: block {b} unreadable: {e}")),
        }
        let mut copies: Vec<(u64, Result<bytes::Bytes, String>)> = Vec::new();
        for node in &pgs[pg] {
            let local = by_id[node]
                .server()
                .and_then(|s| s.store().volume(&store_name));
            let got = match local {
                Some(v) => v
                    .read(offset, BLOCK_BYTES as u32)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("node down or volume missing".into()),
            };
            copies.push((*node, got));
        }
        let first = &copies[0].1;
        if copies.iter().any(|(_, c)| c != first) {
            let summary: Vec<String> = copies
                .iter()
                .map(|(n, c)| match c {
                    Ok(d) => format!(
                        "node {n}: {:?}",
                        super::check::decode(b, d).unwrap_or(u64::MAX)
                    ),
                    Err(e) => format!("node {n}: {e}"),
                })
                .collect();
            let writes = shared.history.lock().expect("history").describe(b);
            let mut versions = Vec::new();
            for node in &pgs[pg] {
                let v = match by_id[node].server() {
                    Some(s) => match s.volume(volume_id).await {
                        Ok(Some(v)) => format!("{:?}", v.extent_versions(extent, 1)[0]),
                        Ok(None) => "no volume".into(),
                        Err(e) => e.to_string(),
                    },
                    None => "down".into(),
                };
                versions.push(format!("node {node}: {v}"));
            }
            let writes = format!("{writes}; extent {extent} versions {}", versions.join(", "));
            shared.fail(format!(
                "after heal: the replicas of PG {pg} differ at block {b}: {}; its writes: {writes}",
                summary.join(", ")
            ));
        }
    }
    shared.history.lock().expect("history").writes_acked
}
