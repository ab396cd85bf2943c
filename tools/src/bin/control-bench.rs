//! `control-bench`: the control plane under thousands of storage nodes, on one machine.
//!
//! The real metadata group (3 `fabricd node --roles meta` processes: openraft, sled, tonic) and
//! N simulated storage agents as tasks of this process. Each agent is the daemon's own agent
//! loop (`fabric::agent::run`: registration, a heartbeat a second to the leader, probes asked
//! for by the leader) with its own connection, and follows `Watch` (pools) like a storage node.
//! A probe of a simulated node answers from the bench's record of which agents it stopped.
//!
//! For each N it prints: heartbeats absorbed per second; the leader's CPU (cores per 1,000
//! agents) and resident memory per agent; Raft log entries per minute in steady state; the
//! detection latency of 100 stopped agents (last accepted heartbeat → `down` seen on a watch);
//! false downs while 5 % of the agents stall for 2 s; the propagation of a PG map change
//! (commit → applied by every agent); and the time of volume attaches from 64 clients.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fabric::agent::{Beats, Prober};
use fabric::meta::client::Client;
use fabric::meta::watcher::{Follower, follow};
use proto::meta as pb;
use tokio::sync::watch;
use tools::group::Group;

#[derive(Parser)]
#[command(
    name = "control-bench",
    about = "Benchmark Fabric's control plane with thousands of simulated storage agents"
)]
struct Args {
    /// Agent counts to run, one fresh group each.
    #[arg(long, value_delimiter = ',', default_value = "2000,5000,10000")]
    agents: Vec<usize>,
    /// Directory for the members' data; removed afterwards.
    #[arg(long, default_value = "./.control-bench")]
    dir: PathBuf,
    /// Seconds of steady state measured.
    #[arg(long, default_value_t = 20)]
    steady_seconds: u64,
    /// Volumes created and then attached.
    #[arg(long, default_value_t = 10_000)]
    attaches: usize,
    /// Concurrent clients of the creates and attaches.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Agents per rack.
    #[arg(long, default_value_t = 20)]
    rack_size: usize,
}

/// Members of the metadata group.
const MEMBERS: u64 = 3;
/// Agents stopped for the detection measurement.
const STOPPED: usize = 100;
/// Share of agents stalled for the false-down measurement, in percent.
const STALLED_PERCENT: usize = 5;
/// How long a stalled agent sends nothing.
const STALL: Duration = Duration::from_secs(2);
/// Agents started together, and the pause between such waves.
const AGENTS_PER_WAVE: usize = 500;
const WAVE_PAUSE_MS: u64 = 100;
/// Ids of simulated nodes start above the members'.
const FIRST_AGENT_ID: u64 = 1_000;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_fd_limit()?;
    let runtime = tokio::runtime::Runtime::new().context("start tokio")?;
    let mut rows = Vec::new();
    for &n in &args.agents {
        let dir = args.dir.join(format!("n{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let result = runtime.block_on(run(&args, n, &dir));
        let _ = std::fs::remove_dir_all(&dir);
        let r = result.with_context(|| format!("{n} agents"))?;
        r.print(n);
        rows.push((n, r));
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    println!();
    println!(
        "{:>7} {:>10} {:>11} {:>9} {:>10} {:>22} {:>6} {:>15} {:>9}",
        "agents",
        "beats/s",
        "core/1k",
        "KiB/agent",
        "log/min",
        "detect p50/p99/max s",
        "false",
        "prop p50/p99 s",
        "attach s"
    );
    for (n, r) in &rows {
        println!(
            "{n:>7} {:>10.0} {:>11.4} {:>9.1} {:>10.1} {:>7.2}/{:>6.2}/{:>6.2} {:>6} {:>7.3}/{:>7.3} {:>9.2}",
            r.beats_per_s,
            r.cores_per_1k,
            r.rss_kib_per_agent,
            r.log_per_min,
            r.detect.0,
            r.detect.1,
            r.detect.2,
            r.false_downs,
            r.propagation.0,
            r.propagation.1,
            r.attach_s
        );
    }
    println!(
        "targets: 0 log entries per steady heartbeat; <= 0.05 core/1k; detection p99 <= 5 s, \
         max <= 8 s; 0 false downs; propagation p99 <= 1 s; 10,000 attaches <= 10 s"
    );
    Ok(())
}

/// Open files this process (and the members it starts) asks for: a connection or two per
/// agent on each side.
const FILES_WANTED: u64 = 1 << 18;

/// Lets this process (and the members it starts) hold a connection per agent: the hard limit
/// is raised where the process may (as root), the soft one to the hard one.
fn raise_fd_limit() -> anyhow::Result<()> {
    // SAFETY: getrlimit/setrlimit with a properly sized struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        let raised = libc::rlimit {
            rlim_cur: FILES_WANTED.max(lim.rlim_max),
            rlim_max: FILES_WANTED.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return Ok(());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
        eprintln!(
            "control-bench: open files limited to {} (an agent holds one connection)",
            lim.rlim_max
        );
    }
    Ok(())
}

struct Results {
    beats_per_s: f64,
    cores_per_1k: f64,
    rss_kib_per_agent: f64,
    log_per_min: f64,
    /// p50, p99, max in seconds.
    detect: (f64, f64, f64),
    false_downs: usize,
    /// p50, p99 in seconds.
    propagation: (f64, f64),
    attach_s: f64,
    register_s: f64,
    /// The out's commit (with its remap), as its caller saw it.
    commit_s: f64,
    propagation_cpu: PropagationCpu,
}

/// Where the CPU went while a map change reached every agent: the leader's process, this
/// process (every agent's side of its stream, plus their heartbeats), and the whole machine.
struct PropagationCpu {
    window_s: f64,
    leader_s: f64,
    bench_s: f64,
    /// Share of all CPUs busy over the window.
    machine_busy: f64,
}

impl Results {
    fn print(&self, n: usize) {
        println!(
            "{n} agents: registered in {:.1} s; {:.0} heartbeats/s; leader {:.4} cores/1k agents, \
             {:.1} KiB/agent; {:.1} log entries/min; detection p50 {:.2} s p99 {:.2} s max {:.2} s; \
             {} false downs; remap committed in {:.3} s, propagation p50 {:.3} s p99 {:.3} s; \
             attaches {:.2} s; while the map propagated ({:.2} s) the leader used {:.2} core-s, \
             the agents' process {:.2} core-s, the machine was {:.0} % busy",
            self.register_s,
            self.beats_per_s,
            self.cores_per_1k,
            self.rss_kib_per_agent,
            self.log_per_min,
            self.detect.0,
            self.detect.1,
            self.detect.2,
            self.false_downs,
            self.commit_s,
            self.propagation.0,
            self.propagation.1,
            self.attach_s,
            self.propagation_cpu.window_s,
            self.propagation_cpu.leader_s,
            self.propagation_cpu.bench_s,
            self.propagation_cpu.machine_busy * 100.0
        );
    }
}

/// Which simulated nodes are dead, for the probes.
#[derive(Default)]
struct SimProber {
    dead: RwLock<HashSet<u64>>,
}

impl Prober for SimProber {
    async fn reachable(&self, node: u64, _data_addr: &str) -> bool {
        !self.dead.read().expect("prober lock").contains(&node)
    }
}

/// One simulated agent.
struct Agent {
    id: u64,
    client: Arc<Client>,
    beats: Arc<Beats>,
    map: Arc<MapSeen>,
    stop: watch::Sender<bool>,
    registration: pb::RegisterNodeRequest,
}

/// The PG map epoch an agent's watch brought, and when (µs since the bench's origin).
#[derive(Default)]
struct MapSeen {
    map_epoch: AtomicU64,
    at_us: AtomicU64,
}

/// An agent's watch follower: the pool's map epoch only.
struct AgentMap {
    epoch: u64,
    seen: Arc<MapSeen>,
    origin: Instant,
}

impl Follower for AgentMap {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn apply(&mut self, event: pb::WatchEvent) -> bool {
        if !event.full && event.base_epoch != self.epoch {
            return false;
        }
        self.epoch = event.cluster_epoch;
        if let Some(p) = event.pools.iter().max_by_key(|p| p.map_epoch)
            && p.map_epoch > self.seen.map_epoch.load(Ordering::Relaxed)
        {
            let at = self.origin.elapsed().as_micros() as u64;
            self.seen.at_us.store(at, Ordering::Relaxed);
            self.seen.map_epoch.store(p.map_epoch, Ordering::Release);
        }
        true
    }
}

/// The bench's own watch of the nodes: when each went down.
struct NodeWatch {
    epoch: u64,
    down: Arc<Mutex<BTreeMap<u64, Instant>>>,
    health: BTreeMap<u64, String>,
}

impl Follower for NodeWatch {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn apply(&mut self, event: pb::WatchEvent) -> bool {
        if !event.full && event.base_epoch != self.epoch {
            return false;
        }
        self.epoch = event.cluster_epoch;
        let now = Instant::now();
        for n in event.nodes {
            let was = self.health.insert(n.id, n.health.clone());
            if n.health == "down" && was.as_deref() != Some("down") {
                self.down
                    .lock()
                    .expect("down lock")
                    .entry(n.id)
                    .or_insert(now);
            }
        }
        true
    }
}

fn spawn_agent(agent: &Agent, prober: &Arc<SimProber>, origin: Instant) {
    let stopped = agent.stop.subscribe();
    tokio::spawn(fabric::agent::run(
        agent.registration.clone(),
        Arc::clone(&agent.client),
        Arc::clone(prober),
        Arc::clone(&agent.beats),
        None,
        stopped.clone(),
    ));
    let client = Arc::clone(&agent.client);
    let mut follower = AgentMap {
        epoch: 0,
        seen: Arc::clone(&agent.map),
        origin,
    };
    let request = pb::WatchRequest {
        exclude_nodes: true,
        exclude_volumes: true,
        ..pb::WatchRequest::default()
    };
    tokio::spawn(async move { follow(&client, request, &mut follower, stopped).await });
}

fn registration(i: usize, rack_size: usize) -> pb::RegisterNodeRequest {
    let id = FIRST_AGENT_ID + i as u64;
    pb::RegisterNodeRequest {
        id,
        rpc_addr: String::new(),
        // Never dialled: probes of simulated nodes are answered by the bench.
        data_addr: format!("127.0.0.1:{}", 10_000 + i % 50_000),
        location: Some(pb::Location {
            levels: vec![
                pb::LocationLevel {
                    level: "rack".into(),
                    name: format!("r{}", i / rack_size),
                },
                pb::LocationLevel {
                    level: "host".into(),
                    name: format!("h{id}"),
                },
            ],
        }),
        disks: vec![pb::Disk {
            name: "data".into(),
            capacity_bytes: 1 << 40,
        }],
    }
}

async fn run(args: &Args, n: usize, dir: &std::path::Path) -> anyhow::Result<Results> {
    // Election timeouts of a loaded machine: three members, the bench and ten thousand
    // connections share two cores, and the default half second let followers call elections
    // while the leader was busy accepting the agents.
    let group = Group::start(
        dir,
        MEMBERS,
        &[
            "--roles",
            "meta",
            "--heartbeat-interval-ms",
            "250",
            "--election-timeout-min-ms",
            "1500",
            "--election-timeout-max-ms",
            "3000",
        ],
    )?;
    let all = Arc::new(Client::new(group.addrs.clone(), group.admin.clone()));
    all.leader_status().await.context("find the leader")?;
    let origin = Instant::now();

    // Registration: one command per node, from `clients` concurrent callers.
    let registrations: Vec<pb::RegisterNodeRequest> =
        (0..n).map(|i| registration(i, args.rack_size)).collect();
    let started = Instant::now();
    for_all(
        args.clients,
        &registrations,
        &group.addrs,
        &group.admin,
        |c, r| async move {
            c.call(|mut m| {
                let r = r.clone();
                async move { m.register_node(r).await }
            })
            .await
            .map(|_| ())
        },
    )
    .await
    .context("register the agents")?;
    let register_s = started.elapsed().as_secs_f64();
    // The leader that took the registrations (elected and settled by now); its memory before
    // any agent connects is the baseline of the per-agent figure.
    let leader = all.leader_status().await.context("find the leader")?;
    let leader_pid = group.pid(leader.id).context("leader pid")?;
    let rss_before = rss_kib(leader_pid)?;

    let prober = Arc::new(SimProber::default());
    let agents: Vec<Agent> = registrations
        .into_iter()
        .map(|registration| {
            // Every agent dials its own connection, one only (the process's open files are
            // capped at 20,000 here): heartbeats and its watch both go to the leader, the worst
            // case for the leader. With the other members listed too, a call that timed out in
            // a burst would move on to a follower and open a second connection.
            let endpoints = vec![leader.rpc_addr.clone()];
            Agent {
                id: registration.id,
                // The simulated nodes have no certificates of their own: they call as the
                // administrator, who may register and heartbeat for any node.
                client: Arc::new(Client::new(endpoints, group.admin.clone())),
                beats: Arc::new(Beats::default()),
                map: Arc::new(MapSeen::default()),
                stop: watch::channel(false).0,
                registration,
            }
        })
        .collect();
    // Started in waves, as nodes booting in a rack would: a member's listener queues a few
    // thousand connections, not ten thousand at once.
    for wave in agents.chunks(AGENTS_PER_WAVE) {
        for a in wave {
            spawn_agent(a, &prober, origin);
        }
        tokio::time::sleep(Duration::from_millis(WAVE_PAUSE_MS)).await;
    }
    let beating = || {
        agents
            .iter()
            .filter(|a| a.beats.accepted.load(Ordering::Relaxed) > 0)
            .count()
    };
    let started = Instant::now();
    while beating() < n {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{} of {n} agents heartbeating after 120 s", beating());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "control-bench: {n} agents heartbeating {:.1} s after the first started",
        started.elapsed().as_secs_f64()
    );
    let pool = pb::CreatePoolRequest {
        name: "bench".into(),
        rule: Some(pb::Rule {
            replicas: 3,
            min_replicas: 2,
            failure_domain: "rack".into(),
            tag_filter: Vec::new(),
        }),
        pg_count: 256,
    };
    all.call(|mut c| {
        let pool = pool.clone();
        async move { c.create_pool(pool).await }
    })
    .await
    .context("create the pool")?;
    let down = Arc::new(Mutex::new(BTreeMap::new()));
    {
        let watcher = Arc::clone(&all);
        let mut nodes = NodeWatch {
            epoch: 0,
            down: Arc::clone(&down),
            health: BTreeMap::new(),
        };
        let request = pb::WatchRequest {
            exclude_pools: true,
            exclude_volumes: true,
            ..pb::WatchRequest::default()
        };
        let (_forever, never) = watch::channel(false);
        tokio::spawn(async move {
            let _keep = _forever;
            follow(&watcher, request, &mut nodes, never).await
        });
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Steady state.
    let beats = |agents: &[Agent]| -> u64 {
        agents
            .iter()
            .map(|a| a.beats.accepted.load(Ordering::Relaxed))
            .sum()
    };
    let log0 = all.status_of(&leader.rpc_addr).await?.last_log_index;
    let cpu0 = cpu_ticks(leader_pid)?;
    let beats0 = beats(&agents);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
    let window = t0.elapsed().as_secs_f64();
    let beats_per_s = (beats(&agents) - beats0) as f64 / window;
    let cores = (cpu_ticks(leader_pid)? - cpu0) as f64 / clock_ticks() / window;
    let log1 = all.status_of(&leader.rpc_addr).await?.last_log_index;
    let log_per_min = (log1 - log0) as f64 * 60.0 / window;
    let rss_kib_per_agent = (rss_kib(leader_pid)?.saturating_sub(rss_before)) as f64 / n as f64;

    // Detection: STOPPED agents spread over the racks stop and answer no probe.
    let step = n / STOPPED;
    let stopped: Vec<&Agent> = agents.iter().step_by(step.max(1)).take(STOPPED).collect();
    {
        let mut dead = prober.dead.write().expect("prober lock");
        for a in &stopped {
            dead.insert(a.id);
        }
    }
    for a in &stopped {
        a.stop.send_replace(true);
    }
    wait_for(
        "the stopped agents marked down",
        Duration::from_secs(60),
        || {
            let down = down.lock().expect("down lock");
            stopped.iter().all(|a| down.contains_key(&a.id))
        },
    )
    .await?;
    let mut detect: Vec<f64> = {
        let down = down.lock().expect("down lock");
        stopped
            .iter()
            .map(|a| {
                let last = a
                    .beats
                    .last_accepted
                    .lock()
                    .expect("beats lock")
                    .expect("beat");
                down[&a.id].duration_since(last).as_secs_f64()
            })
            .collect()
    };
    detect.sort_by(f64::total_cmp);

    // False downs: STALLED_PERCENT of the others send nothing for STALL, then resume.
    let stopped_ids: HashSet<u64> = stopped.iter().map(|a| a.id).collect();
    let stall: Vec<&Agent> = agents
        .iter()
        .filter(|a| !stopped_ids.contains(&a.id))
        .step_by(100 / STALLED_PERCENT)
        .collect();
    for a in &stall {
        a.stop.send_replace(true);
    }
    tokio::time::sleep(STALL).await;
    for a in &stall {
        a.stop.send_replace(false);
        spawn_agent(a, &prober, origin);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let false_downs = {
        let down = down.lock().expect("down lock");
        stall.iter().filter(|a| down.contains_key(&a.id)).count()
    };

    // Propagation: a node that holds a PG goes out, its PGs move: a new PG map epoch that
    // every agent follows.
    let live: Vec<&Agent> = agents
        .iter()
        .filter(|a| !stopped_ids.contains(&a.id))
        .collect();
    let pools = all
        .call(|mut c| async move { c.list_pools(pb::ListPoolsRequest {}).await })
        .await
        .context("list the pools")?;
    let pool = pools.pools.first().context("the bench pool")?;
    let holder = pool
        .pgs
        .first()
        .and_then(|pg| pg.replicas.first())
        .copied()
        .context("a PG with a replica")?;
    let target = pool.map_epoch + 1;
    let out = pb::NodeParticipationRequest {
        node: holder,
        out: true,
    };
    let (leader_cpu0, bench_cpu0, machine0) = (
        cpu_ticks(leader_pid)?,
        cpu_ticks(std::process::id())?,
        machine_ticks()?,
    );
    let asked = Instant::now();
    all.call(|mut c| async move { c.set_node_participation(out).await })
        .await
        .context("mark a node out")?;
    // Committed and applied on the leader when the call returns: propagation counts from here.
    let commit_s = asked.elapsed().as_secs_f64();
    let sent = origin.elapsed().as_micros() as u64;
    wait_for(
        "every agent applied the new map",
        Duration::from_secs(60),
        || {
            live.iter()
                .all(|a| a.map.map_epoch.load(Ordering::Acquire) >= target)
        },
    )
    .await?;
    let window = asked.elapsed().as_secs_f64();
    let (busy, total) = machine_ticks()?;
    let propagation_cpu = PropagationCpu {
        window_s: window,
        leader_s: (cpu_ticks(leader_pid)? - leader_cpu0) as f64 / clock_ticks(),
        bench_s: (cpu_ticks(std::process::id())? - bench_cpu0) as f64 / clock_ticks(),
        machine_busy: (busy - machine0.0) as f64 / (total - machine0.1).max(1) as f64,
    };
    let mut propagation: Vec<f64> = live
        .iter()
        .map(|a| a.map.at_us.load(Ordering::Relaxed).saturating_sub(sent) as f64 / 1e6)
        .collect();
    propagation.sort_by(f64::total_cmp);

    // Attaches: create the volumes, then attach them all from `clients` callers.
    let creates: Vec<pb::CreateVolumeRequest> = (0..args.attaches)
        .map(|i| pb::CreateVolumeRequest {
            name: format!("v{i}"),
            pool: "bench".into(),
            size_bytes: 1 << 30,
            extent_size_bytes: 0,
            request_id: String::new(),
        })
        .collect();
    for_all(
        args.clients,
        &creates,
        &group.addrs,
        &group.admin,
        |c, r| async move { c.create_volume(r.clone()).await.map(|_| ()) },
    )
    .await
    .context("create the volumes")?;
    let attaches: Vec<pb::AttachVolumeRequest> = (0..args.attaches)
        .map(|i| pb::AttachVolumeRequest {
            name: format!("v{i}"),
            client: format!("host-{}", i % 64),
            force: false,
            request_id: fabric::meta::client::new_request_id(),
        })
        .collect();
    let started = Instant::now();
    for_all(
        args.clients,
        &attaches,
        &group.addrs,
        &group.admin,
        |c, r| async move {
            c.call(|mut m| {
                let r = r.clone();
                async move { m.attach_volume(r).await }
            })
            .await
            .map(|_| ())
        },
    )
    .await
    .context("attach the volumes")?;
    let attach_s = started.elapsed().as_secs_f64();

    for a in &agents {
        a.stop.send_replace(true);
    }
    drop(group);
    Ok(Results {
        beats_per_s,
        cores_per_1k: cores * 1000.0 / n as f64,
        rss_kib_per_agent,
        log_per_min,
        detect: (
            percentile(&detect, 50.0),
            percentile(&detect, 99.0),
            *detect.last().unwrap_or(&0.0),
        ),
        false_downs,
        propagation: (
            percentile(&propagation, 50.0),
            percentile(&propagation, 99.0),
        ),
        attach_s,
        register_s,
        commit_s,
        propagation_cpu,
    })
}

/// Runs `call` for every item, from `clients` concurrent callers with a client each.
async fn for_all<T, F, Fut>(
    clients: usize,
    items: &[T],
    endpoints: &[String],
    transport: &fabric::identity::Transport,
    call: F,
) -> anyhow::Result<()>
where
    T: Clone + Send + Sync + 'static,
    F: Fn(Arc<Client>, T) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let items: Arc<Vec<T>> = Arc::new(items.to_vec());
    let mut tasks: tokio::task::JoinSet<Result<(), tonic::Status>> = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (next, items, call) = (Arc::clone(&next), Arc::clone(&items), call.clone());
        let client = Arc::new(Client::new(endpoints.to_vec(), transport.clone()));
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(item) = items.get(i) else {
                    return Ok(());
                };
                call(Arc::clone(&client), item.clone()).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat format")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// Busy and total ticks of all CPUs together, from `/proc/stat`.
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat cpu line")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}
