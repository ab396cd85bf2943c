//! `placement-sim`: builds a synthetic cluster from flags, maps one pool onto it and reports
//! balance, fault-domain violations and mapping cost, then how many replicas move, against the
//! optimum, when 1% hosts are added, a host is removed, a rack fails, one disk weight changes,
//! and the balancer runs once. `--dump-mapping FILE` writes the map and the PG map as plain
//! text so anyone can recheck them, and `FILE.balanced` the same map with the PG map after the
//! balancer's overrides:
//!
//! ```text
//! disk DISK_ID HOST_ID RACK_ID WEIGHT
//! pg PG_ID DISK_ID DISK_ID DISK_ID
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Parser;
use placement::synthetic::{RACK_ID_BASE, Topology};
use placement::{
    Balance, ClusterMap, Edit, Overrides, PgMap, PgMapDiff, Pool, PoolSpec, State, Violations,
    WEIGHT_UNITS_PER_WEIGHT,
};
use rayon::prelude::*;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Simulate Fabric placement on a synthetic cluster")]
struct Args {
    #[arg(long, default_value_t = 4)]
    cells: u32,
    #[arg(long, default_value_t = 250)]
    racks: u32,
    #[arg(long, default_value_t = 10_000)]
    hosts: u32,
    #[arg(long, default_value_t = 12)]
    disks_per_host: u32,
    /// Weight of every disk (for example its capacity in TiB).
    #[arg(long, default_value_t = 1.0)]
    disk_weight: f64,
    #[arg(long, default_value_t = 1_048_576)]
    pgs: u32,
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Level no two replicas of a PG may share.
    #[arg(long, default_value = "rack")]
    failure_domain: String,
    /// Worker threads for mapping; 1 measures single-core cost, 0 uses every core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Replica moves the balancer may plan in its one round (default: one per PG).
    #[arg(long)]
    balancer_budget: Option<usize>,
    /// Bytes per PG, to turn replica moves into bytes moved.
    #[arg(long, default_value_t = 1 << 30)]
    pg_bytes: u64,
    /// Print JSON instead of the human table.
    #[arg(long)]
    json: bool,
    /// Write the initial map and PG map as plain text to FILE.
    #[arg(long, value_name = "FILE")]
    dump_mapping: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    topology: TopologyReport,
    mapping: MappingReport,
    balance: Balance,
    violations: Violations,
    scenarios: Vec<Scenario>,
    balanced: Balance,
    balanced_violations: Violations,
    peak_rss_mib: Option<f64>,
}

#[derive(Serialize)]
struct TopologyReport {
    cells: u32,
    racks: u32,
    hosts: u32,
    disks: usize,
    total_weight: f64,
    line_blocks: u32,
}

#[derive(Serialize)]
struct MappingReport {
    pgs: u32,
    replicas: u32,
    failure_domain: String,
    threads: usize,
    /// Wall-clock time of the mapping.
    seconds: f64,
    micros_per_pg: f64,
    /// CPU time of the whole process during the mapping (all threads), if the OS reports it.
    cpu_seconds: Option<f64>,
}

/// Movement caused by one change, against the least movement that change requires.
#[derive(Serialize)]
struct Scenario {
    name: String,
    pgs_changed: u64,
    replicas_moved: u64,
    optimum: f64,
    ratio: f64,
    /// Moved replicas that neither left nor reached the changed capacity (0 is optimal).
    unrelated_moves: u64,
    bytes_moved: u64,
    seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.hosts >= args.racks && args.racks >= args.cells && args.cells >= 1,
        "need hosts >= racks >= cells >= 1"
    );
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let workers = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("start worker threads")?;
    let topology = Topology {
        cells: args.cells,
        racks: args.racks,
        hosts: args.hosts,
        disks_per_host: args.disks_per_host,
        disk_weight: args.disk_weight,
    };
    let map = ClusterMap::new(topology.spec()).context("build the cluster map")?;
    let spec = PoolSpec {
        id: 1,
        name: "sim".into(),
        replicas: args.replicas,
        failure_domain: args.failure_domain.clone(),
        subtree: None,
        tags: Default::default(),
        pg_count: args.pgs,
    };
    let pool = Pool::compile(&spec, &map).context("compile the pool's rule")?;

    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let base = workers.install(|| map_all(&map, &pool, None))?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu_before
        .zip(cpu_seconds())
        .map(|(before, after)| after - before);
    let mapping = MappingReport {
        pgs: args.pgs,
        replicas: args.replicas,
        failure_domain: args.failure_domain.clone(),
        threads,
        seconds,
        micros_per_pg: seconds * 1e6 / args.pgs as f64,
        cpu_seconds,
    };
    let balance = Balance::of(&map, &pool, &base);
    let violations = Violations::of(&map, &pool, &base);
    if let Some(path) = &args.dump_mapping {
        dump(&map, &base, path).with_context(|| format!("write {}", path.display()))?;
    }

    let mut scenarios = Vec::new();
    let sim = Sim {
        topology,
        spec: &spec,
        map: &map,
        base: &base,
        pg_bytes: args.pg_bytes,
        workers: &workers,
    };
    scenarios.push(sim.add_hosts()?);
    scenarios.push(sim.remove_host()?);
    scenarios.push(sim.fail_rack()?);
    scenarios.push(sim.change_weight()?);
    let (scenario, balanced_pgmap) =
        sim.balancer(args.balancer_budget.unwrap_or(args.pgs as usize))?;
    scenarios.push(scenario);
    let balanced = Balance::of(&map, &pool, &balanced_pgmap);
    let balanced_violations = Violations::of(&map, &pool, &balanced_pgmap);
    if let Some(path) = &args.dump_mapping {
        let mut balanced_path = path.clone().into_os_string();
        balanced_path.push(".balanced");
        let balanced_path = PathBuf::from(balanced_path);
        dump(&map, &balanced_pgmap, &balanced_path)
            .with_context(|| format!("write {}", balanced_path.display()))?;
    }

    let report = Report {
        topology: TopologyReport {
            cells: args.cells,
            racks: args.racks,
            hosts: args.hosts,
            disks: map.disk_count(),
            total_weight: map.total_weight_units() as f64 / WEIGHT_UNITS_PER_WEIGHT as f64,
            line_blocks: map.line_blocks(),
        },
        mapping,
        balance,
        violations,
        scenarios,
        balanced,
        balanced_violations,
        peak_rss_mib: peak_rss_mib(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Maps every PG, splitting the range over the current rayon pool.
fn map_all(map: &ClusterMap, pool: &Pool, overrides: Option<&Overrides>) -> anyhow::Result<PgMap> {
    const PGS_PER_TASK: usize = 4096;
    let replicas = pool.replicas();
    let mut disks = vec![0u32; pool.pg_count() as usize * replicas];
    disks
        .par_chunks_mut(PGS_PER_TASK * replicas)
        .enumerate()
        .try_for_each(|(i, chunk)| {
            PgMap::compute_chunk(map, pool, overrides, (i * PGS_PER_TASK) as u32, chunk)
        })?;
    Ok(PgMap::from_parts(pool.id(), map.epoch(), replicas, disks))
}

struct Sim<'a> {
    topology: Topology,
    spec: &'a PoolSpec,
    map: &'a ClusterMap,
    base: &'a PgMap,
    pg_bytes: u64,
    workers: &'a rayon::ThreadPool,
}

impl Sim<'_> {
    /// Applies `edits`, remaps, and compares with the base mapping. `changed` are the disks whose
    /// capacity the edit touched: a move that neither leaves nor reaches one is unrelated.
    fn scenario(
        &self,
        name: &str,
        edits: &[Edit],
        changed: &HashSet<u32>,
        optimum: f64,
    ) -> anyhow::Result<Scenario> {
        let started = Instant::now();
        let map = self
            .map
            .apply(edits)
            .with_context(|| format!("apply the edits of `{name}`"))?;
        let pool = Pool::compile(self.spec, &map)
            .with_context(|| format!("compile the pool after `{name}`"))?;
        let after = self.workers.install(|| map_all(&map, &pool, None))?;
        let seconds = started.elapsed().as_secs_f64();
        let diff = PgMapDiff::between(self.base, &after)?;
        Ok(self.report(name, &diff, changed, optimum, seconds))
    }

    fn report(
        &self,
        name: &str,
        diff: &PgMapDiff,
        changed: &HashSet<u32>,
        optimum: f64,
        seconds: f64,
    ) -> Scenario {
        let unrelated_moves = diff
            .changes
            .iter()
            .flat_map(|c| c.removed.iter().zip(&c.added))
            .filter(|(from, to)| !changed.contains(from) && !changed.contains(to))
            .count() as u64;
        Scenario {
            name: name.to_string(),
            pgs_changed: diff.pgs_changed,
            replicas_moved: diff.replicas_moved,
            optimum,
            ratio: if optimum > 0.0 {
                diff.replicas_moved as f64 / optimum
            } else {
                f64::NAN
            },
            unrelated_moves,
            bytes_moved: diff.bytes_moved(self.pg_bytes),
            seconds,
        }
    }

    fn total_replicas(&self) -> f64 {
        self.base.pg_count() as f64 * self.base.replicas() as f64
    }

    /// Replicas the base mapping put on `disks`.
    fn held_by(&self, disks: &HashSet<u32>) -> f64 {
        self.base
            .iter()
            .flat_map(|(_, r)| r)
            .filter(|d| disks.contains(d))
            .count() as f64
    }

    fn add_hosts(&self) -> anyhow::Result<Scenario> {
        let t = self.topology;
        let count = t.hosts.div_ceil(100);
        let edits = t.add_hosts(t.hosts, count);
        let added: HashSet<u32> = (t.hosts..t.hosts + count)
            .flat_map(|h| (0..t.disks_per_host).map(move |d| t.disk_id(h, d)))
            .collect();
        let added_weight = added.len() as f64 * t.disk_weight;
        let total_weight =
            self.map.total_weight_units() as f64 / WEIGHT_UNITS_PER_WEIGHT as f64 + added_weight;
        let optimum = self.total_replicas() * added_weight / total_weight;
        self.scenario(&format!("add {count} hosts (1%)"), &edits, &added, optimum)
    }

    fn remove_host(&self) -> anyhow::Result<Scenario> {
        let t = self.topology;
        let removed: HashSet<u32> = (0..t.disks_per_host).map(|d| t.disk_id(0, d)).collect();
        self.scenario(
            "remove a host",
            &t.remove_host(0),
            &removed,
            self.held_by(&removed),
        )
    }

    fn fail_rack(&self) -> anyhow::Result<Scenario> {
        let t = self.topology;
        let failed: HashSet<u32> = (0..t.hosts)
            .filter(|&h| t.rack_of_host(h) == 0)
            .flat_map(|h| (0..t.disks_per_host).map(move |d| t.disk_id(h, d)))
            .collect();
        let edits = [Edit::SetState {
            bucket: RACK_ID_BASE,
            state: State {
                down: true,
                out: true,
                draining: false,
            },
        }];
        self.scenario(
            "fail a rack (mark out)",
            &edits,
            &failed,
            self.held_by(&failed),
        )
    }

    fn change_weight(&self) -> anyhow::Result<Scenario> {
        let t = self.topology;
        let disk = t.disk_id(0, 0);
        let (old, new) = (t.disk_weight, t.disk_weight * 1.5);
        let total = self.map.total_weight_units() as f64 / WEIGHT_UNITS_PER_WEIGHT as f64;
        let optimum = self.total_replicas() * (new / (total + new - old) - old / total);
        let edits = [Edit::SetWeight { disk, weight: new }];
        self.scenario(
            "change one disk weight x1.5",
            &edits,
            &HashSet::from([disk]),
            optimum,
        )
    }

    /// One balancer round from the base mapping; the optimum is the fewest moves that could
    /// bring every disk within tolerance. Returns the scenario and the balanced PG map.
    fn balancer(&self, budget: usize) -> anyhow::Result<(Scenario, PgMap)> {
        let pool = Pool::compile(self.spec, self.map)?;
        let started = Instant::now();
        let plan = placement::balance(
            self.map,
            &pool,
            self.base,
            &Overrides::new(pool.id()),
            budget,
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let counts = placement::stats::replica_counts(self.map, self.base);
        let targets = placement::stats::targets(self.map, &pool, counts.iter().sum());
        let (mut over, mut under) = (0.0f64, 0.0f64);
        for (&count, &target) in counts.iter().zip(&targets) {
            let allowed = placement::stats::deviation_allowed(target);
            over += (count as f64 - (target + allowed).floor()).max(0.0);
            under += ((target - allowed).ceil() - count as f64).max(0.0);
        }
        let diff = PgMapDiff::between(self.base, &plan.pgmap)?;
        let every_disk: HashSet<u32> = (0..self.map.disk_count() as u32)
            .map(|s| self.map.disk(s).id)
            .collect();
        let mut scenario = self.report(
            &format!("balancer, one round (budget {budget})"),
            &diff,
            &every_disk,
            over.max(under),
            seconds,
        );
        scenario.unrelated_moves = 0;
        let recomputed = self
            .workers
            .install(|| map_all(self.map, &pool, Some(&plan.overrides)))?;
        ensure!(
            recomputed == plan.pgmap,
            "the balancer's overrides do not reproduce its PG map"
        );
        Ok((scenario, plan.pgmap))
    }
}

fn dump(map: &ClusterMap, pgmap: &PgMap, path: &PathBuf) -> anyhow::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    let host_level = map
        .level_index("host")
        .context("the map has no `host` level")?;
    let rack_level = map
        .level_index("rack")
        .context("the map has no `rack` level")?;
    for slot in 0..map.disk_count() as u32 {
        let index = map.disk_index(slot);
        let disk = map.disk(slot);
        let host = map
            .ancestor_at(index, host_level)
            .map_or(0, |i| map.bucket(i).id);
        let rack = map
            .ancestor_at(index, rack_level)
            .map_or(0, |i| map.bucket(i).id);
        let weight = disk.weight_units as f64 / WEIGHT_UNITS_PER_WEIGHT as f64;
        writeln!(out, "disk {} {host} {rack} {weight}", disk.id)?;
    }
    for (pg, replicas) in pgmap.iter() {
        write!(out, "pg {pg}")?;
        for d in replicas {
            write!(out, " {d}")?;
        }
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (Linux only;
/// assumes the usual 100 clock ticks per second).
fn cpu_seconds() -> Option<f64> {
    const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLOCK_TICKS_PER_SECOND)
}

/// Peak resident set size of this process, from `/proc/self/status` (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn print_balance(title: &str, b: &Balance, v: &Violations) {
    println!(
        "{title:<24} min {:>5}  mean {:>8.2}  max {:>5}  stddev {:>6.2}  max/mean {:>5.3}  worst dev {:>6.2}  unbalanced disks {:>6}  violations {}",
        b.min,
        b.mean,
        b.max,
        b.stddev,
        b.max_over_mean,
        b.worst_deviation,
        b.unbalanced_disks,
        v.total()
    );
}

fn print_table(r: &Report) {
    let t = &r.topology;
    println!(
        "topology   {} cells, {} racks, {} hosts, {} disks, total weight {}, capacity line in {} blocks",
        t.cells, t.racks, t.hosts, t.disks, t.total_weight, t.line_blocks
    );
    let m = &r.mapping;
    println!(
        "mapping    {} PGs x {} replicas across {}s: {:.3} s wall on {} thread(s), {:.3} us per PG, {} CPU",
        m.pgs,
        m.replicas,
        m.failure_domain,
        m.seconds,
        m.threads,
        m.micros_per_pg,
        m.cpu_seconds
            .map_or("unknown".to_string(), |c| format!("{c:.2} s"))
    );
    print_balance("balance (straw2 only)", &r.balance, &r.violations);
    print_balance("balance (balanced)", &r.balanced, &r.balanced_violations);
    println!();
    println!(
        "{:<40} {:>10} {:>12} {:>12} {:>7} {:>10} {:>14} {:>8}",
        "scenario", "PGs moved", "replicas", "optimum", "ratio", "unrelated", "bytes", "seconds"
    );
    for s in &r.scenarios {
        println!(
            "{:<40} {:>10} {:>12} {:>12.1} {:>7.3} {:>10} {:>14} {:>8.3}",
            s.name,
            s.pgs_changed,
            s.replicas_moved,
            s.optimum,
            s.ratio,
            s.unrelated_moves,
            s.bytes_moved,
            s.seconds
        );
    }
    if let Some(rss) = r.peak_rss_mib {
        println!();
        println!("peak RSS   {rss:.1} MiB");
    }
}
